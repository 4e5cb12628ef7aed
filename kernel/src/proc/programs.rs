//! The ring-3 programs carried in the kernel image (built by `kernel/build.rs` from
//! `user/programs`). They are the kernel tests' programs (victims, abusers, faulters), so
//! the ktest flavour carries them all; the bench flavour carries the workload runner's
//! ring-3 client (`enq`, for `client=process` and `client=direct`) only; the product
//! kernel has none (and its process code finds no program to start).

#[cfg(feature = "bench")]
macro_rules! program {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(env!("USER_PROGRAMS_DIR"), "/", $name)).as_slice(),
        )
    };
}

/// (name, ELF image).
#[cfg(not(feature = "bench"))]
pub static PROGRAMS: &[(&str, &[u8])] = &[];

/// (name, ELF image).
#[cfg(all(feature = "bench", not(feature = "ktest")))]
pub static PROGRAMS: &[(&str, &[u8])] = &[program!("enq")];

/// (name, ELF image).
#[cfg(feature = "ktest")]
pub static PROGRAMS: &[(&str, &[u8])] = &[
    program!("hello"),
    program!("yielder"),
    program!("faulter"),
    program!("abuser"),
    program!("memory"),
    program!("parent"),
    program!("sva"),
    program!("ims"),
    program!("enq"),
];

/// The image of program `name`.
pub fn find(name: &str) -> Option<&'static [u8]> {
    PROGRAMS.iter().find(|(n, _)| *n == name).map(|(_, i)| *i)
}
