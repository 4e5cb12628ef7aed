//! Locks and the command line.

use x86_64::instructions::interrupts;

use crate::ktest;
use crate::sync::IrqMutex;

ktest!(
    fn irq_mutex_disables_and_restores_interrupts() {
        let m = IrqMutex::new(5u32);
        assert!(
            interrupts::are_enabled(),
            "tests run with interrupts enabled"
        );
        {
            let mut g = m.lock();
            assert!(!interrupts::are_enabled());
            *g += 1;
            assert!(m.try_lock().is_none(), "already held");
            assert!(
                !interrupts::are_enabled(),
                "failed try_lock keeps the state"
            );
        }
        assert!(interrupts::are_enabled());
        assert_eq!(*m.try_lock().expect("free again"), 6);
        assert!(interrupts::are_enabled());
    }
);

ktest!(
    fn command_line_is_parsed() {
        assert!(crate::cmdline::has("ktest"));
        assert!(crate::cmdline::raw().contains("ktest"));
        assert!(!crate::cmdline::flag("ktest-absent-flag", false));
        assert!(crate::cmdline::flag("ktest-absent-flag", true));
        assert_eq!(crate::cmdline::get("ktest-absent-flag"), None);
    }
);
