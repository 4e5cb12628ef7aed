//! Strings inside the kernel's machine-readable `RESULT {json}` lines.

use core::fmt;

/// Displays a string escaped for use between JSON quotes: `"` and `\` are escaped and
/// control characters become `\u00XX`, so text from firmware, devices or error messages
/// cannot break the line's JSON.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        assert_eq!(Escaped("plain text é").to_string(), "plain text é");
        assert_eq!(
            Escaped("a\"b\\c\nd\u{1}").to_string(),
            "a\\\"b\\\\c\\u000ad\\u0001"
        );
        // An ACPI signature is four printable bytes chosen by the firmware.
        assert_eq!(format!("\"{}\"", Escaped("A\"\\B")), "\"A\\\"\\\\B\"");
    }
}
