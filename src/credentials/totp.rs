//! TOTP (RFC 6238) second factor for human callers: HMAC-SHA1 over the
//! 30-second time step, 6 digits, one step of clock drift accepted either
//! way. [`Guard`] keeps, per caller and across configuration reloads, the
//! last step accepted — a code is good once, and none from before the
//! process started is accepted (so a restart does not reopen a seen code) —
//! and locks a caller out after repeated wrong codes, so the six digits
//! cannot be guessed by brute force.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

pub const STEP_SECONDS: i64 = 30;
pub const DIGITS: u32 = 6;

/// A caller's TOTP secret.
pub struct Totp {
    key: hmac::Key,
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

    /// The time step `code` is the code of, at Unix time `now`: the
    /// current step or one either side. Comparisons are constant-time.
    pub fn matching_step(&self, code: &str, now: i64) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
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
        matched
    }
}

/// Wrong codes allowed within [`FAILURE_WINDOW`] before a lockout.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// The first lockout; each further one doubles, up to [`MAX_LOCKOUT`].
pub const LOCKOUT: Duration = Duration::from_secs(300);
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);

/// The outcome of a code.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Wrong, expired, or already used.
    Refused,
    /// Too many wrong codes: refused without looking, until the lockout ends.
    LockedOut,
}

#[derive(Default)]
struct Attempts {
    last_step: Option<i64>,
    failures: u32,
    first_failure: Option<Instant>,
    locked_until: Option<Instant>,
    lockouts: u32,
}

/// Per-caller TOTP state that outlives configuration reloads.
pub struct Guard {
    started_step: i64,
    callers: Mutex<HashMap<String, Attempts>>,
}

impl Guard {
    /// `now`: Unix seconds at process start.
    pub fn new(now: i64) -> Guard {
        Guard {
            started_step: now.div_euclid(STEP_SECONDS),
            callers: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, caller: &str, totp: &Totp, code: &str, now: i64) -> Verdict {
        let mut all = self
            .callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let a = all.entry(caller.to_owned()).or_default();
        let t = Instant::now();
        if a.locked_until.is_some_and(|until| t < until) {
            return Verdict::LockedOut;
        }
        let floor = a.last_step.unwrap_or(self.started_step);
        match totp.matching_step(code, now) {
            Some(step) if step > floor => {
                a.last_step = Some(step);
                a.failures = 0;
                a.first_failure = None;
                Verdict::Accepted
            }
            _ => {
                if a.first_failure
                    .is_none_or(|f| t.duration_since(f) > FAILURE_WINDOW)
                {
                    a.first_failure = Some(t);
                    a.failures = 0;
                }
                a.failures += 1;
                if a.failures >= MAX_FAILURES {
                    let lock = LOCKOUT
                        .saturating_mul(1u32 << a.lockouts.min(4))
                        .min(MAX_LOCKOUT);
                    a.locked_until = Some(t + lock);
                    a.lockouts += 1;
                    a.failures = 0;
                    a.first_failure = None;
                    tracing::warn!(
                        caller,
                        minutes = lock.as_secs() / 60,
                        "too many wrong one-time codes; the caller's MFA is locked"
                    );
                }
                Verdict::Refused
            }
        }
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
    fn one_step_of_drift_no_replay_and_nothing_from_before_the_start() {
        let t = Totp::from_bytes(b"12345678901234567890");
        let now = 1_234_567_890;
        let g = Guard::new(now - 120);
        let code = t.code_at_step(now / 30, DIGITS);
        assert_eq!(
            g.check("a", &t, "12345", now),
            Verdict::Refused,
            "wrong length"
        );
        assert_eq!(
            g.check("a", &t, &code, now + 30),
            Verdict::Accepted,
            "drift"
        );
        assert_eq!(
            g.check("a", &t, &code, now + 30),
            Verdict::Refused,
            "replayed"
        );
        let later = t.code_at_step(now / 30 + 2, DIGITS);
        assert_eq!(g.check("a", &t, &later, now + 60), Verdict::Accepted);
        // Another caller's state is its own.
        let g2 = Guard::new(now);
        assert_eq!(
            g2.check("a", &t, &code, now),
            Verdict::Refused,
            "from before the start"
        );
        let next = t.code_at_step(now / 30 + 1, DIGITS);
        assert_eq!(
            g2.check("a", &t, &next, now),
            Verdict::Accepted,
            "the next code is fine"
        );
    }

    #[test]
    fn repeated_wrong_codes_lock_the_caller_out() {
        let t = Totp::from_bytes(b"12345678901234567890");
        let now = 1_234_567_890;
        let g = Guard::new(now - 300);
        for _ in 0..MAX_FAILURES {
            assert_eq!(g.check("a", &t, "000000", now), Verdict::Refused);
        }
        let good = t.code_at_step(now / 30, DIGITS);
        assert_eq!(
            g.check("a", &t, &good, now),
            Verdict::LockedOut,
            "guessing continues"
        );
        assert_eq!(
            g.check("b", &t, &good, now),
            Verdict::Accepted,
            "others unaffected"
        );
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
