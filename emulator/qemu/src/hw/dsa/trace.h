#include "trace/trace-hw_dsa.h"
