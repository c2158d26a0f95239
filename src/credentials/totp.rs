//! TOTP (RFC 6238) second factor for human callers: HMAC-SHA1 over the
//! 30-second time step, 6 digits, one step of clock drift accepted either
//! way, and each accepted step used at most once per caller (a code seen
//! once cannot be replayed within its window).

use std::sync::Mutex;

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

pub const STEP_SECONDS: i64 = 30;
pub const DIGITS: u32 = 6;

/// A caller's TOTP secret and the last time step it accepted.
pub struct Totp {
    key: hmac::Key,
    last_step: Mutex<Option<i64>>,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Totp(..)")
    }
}

impl Totp {
    /// From a base32 secret (RFC 4648, as authenticator apps show it;
    /// spaces, dashes and padding ignored, any case). At least 80 bits.
    pub fn from_base32(secret: &SecretString) -> Result<Totp, &'static str> {
        let raw = Zeroizing::new(
            base32_decode(secret.expose_secret()).ok_or("the TOTP secret is not base32")?,
        );
        if raw.len() < 10 {
            return Err("the TOTP secret is shorter than 80 bits");
        }
        Ok(Totp::from_bytes(&raw))
    }

    pub fn from_bytes(raw: &[u8]) -> Totp {
        Totp {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, raw),
            last_step: Mutex::new(None),
        }
    }

    /// The code for a time step, as a zero-padded string of `digits`.
    pub fn code_at_step(&self, step: i64, digits: u32) -> String {
        let tag = hmac::sign(&self.key, &step.to_be_bytes());
        let h = tag.as_ref();
        let offset = usize::from(h[h.len() - 1] & 0x0f);
        let bin = (u32::from(h[offset]) & 0x7f) << 24
            | u32::from(h[offset + 1]) << 16
            | u32::from(h[offset + 2]) << 8
            | u32::from(h[offset + 3]);
        let code = bin % 10u32.pow(digits);
        format!("{code:0width$}", width = digits as usize)
    }

    /// Checks `code` at Unix time `now`: accepted if it matches the current
    /// step or one either side, and that step is later than the last one
    /// accepted (no replay). Comparisons are constant-time.
    pub fn verify(&self, code: &str, now: i64) -> bool {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let step = now.div_euclid(STEP_SECONDS);
        let mut matched = None;
        for s in [step - 1, step, step + 1] {
            let expected = self.code_at_step(s, DIGITS);
            if aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                code.as_bytes(),
            )
            .is_ok()
            {
                matched = Some(s);
            }
        }
        let Some(s) = matched else {
            return false;
        };
        let mut last = self
            .last_step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|l| s <= l) {
            return false;
        }
        *last = Some(s);
        true
    }
}

/// RFC 4648 base32 without padding requirements; `None` on a bad character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            b'=' | b' ' | b'-' => continue,
            _ => return None,
        };
        buf = (buf << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA1 rows (8 digits, T0 = 0, X = 30).
        let t = Totp::from_bytes(b"12345678901234567890");
        for (time, code) in [
            (59i64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(t.code_at_step(time / 30, 8), code, "T={time}");
        }
    }

    #[test]
    fn verify_accepts_drift_of_one_step_and_refuses_replay() {
        let t = Totp::from_bytes(b"12345678901234567890");
        let now = 1_234_567_890;
        let code = t.code_at_step(now / 30, DIGITS);
        assert!(!t.verify("12345", now), "wrong length");
        assert!(!t.verify("abcdef", now));
        assert!(t.verify(&code, now + 30), "one step of drift");
        assert!(!t.verify(&code, now + 30), "replayed");
        let later = t.code_at_step(now / 30 + 2, DIGITS);
        assert!(t.verify(&later, now + 60));
        let old = t.code_at_step(now / 30 - 5, DIGITS);
        assert!(!Totp::from_bytes(b"12345678901234567890").verify(&old, now));
    }

    #[test]
    fn base32() {
        assert_eq!(
            base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap(),
            b"12345678901234567890"
        );
        assert_eq!(base32_decode("mzxw6ytb").unwrap(), b"fooba");
        assert_eq!(base32_decode("MZXW 6YTB OI======").unwrap(), b"foobar");
        assert!(base32_decode("MZXW1").is_none());
        assert!(Totp::from_base32(&SecretString::from("MZXW6".to_owned())).is_err());
    }
}
