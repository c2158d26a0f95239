//! The kill switch: while trading is halted, every state-changing order
//! action (place, replace, cancel — routes marked `mutates`) is refused with
//! 403 `trading_halted` and never forwarded; reads continue.
//!
//! The state survives a restart: it is written (atomically, 0600) to
//! `kill_switch.state_file` on every change and read at start. A state file
//! that exists but cannot be read means halted (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// Who halted trading, when and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaltState {
    pub halted: bool,
    pub by: Option<String>,
    pub at: Option<String>,
    pub reason: Option<String>,
}

pub struct KillSwitch {
    halted: AtomicBool,
    state: Mutex<HaltState>,
    file: Option<PathBuf>,
}

impl KillSwitch {
    /// Reads the persisted state (none configured: not halted).
    pub fn load(file: Option<&Path>) -> KillSwitch {
        let state = match file {
            None => HaltState {
                halted: false,
                by: None,
                at: None,
                reason: None,
            },
            Some(f) => match std::fs::read(f) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HaltState {
                    halted: false,
                    by: None,
                    at: None,
                    reason: None,
                },
                Err(e) => fail_closed(f, &e.to_string()),
                Ok(bytes) => match serde_json::from_slice::<HaltState>(&bytes) {
                    Ok(s) => s,
                    Err(e) => fail_closed(f, &e.to_string()),
                },
            },
        };
        if state.halted {
            tracing::warn!(
                by = state.by.as_deref(),
                reason = state.reason.as_deref(),
                "trading is halted"
            );
        }
        KillSwitch {
            halted: AtomicBool::new(state.halted),
            state: Mutex::new(state),
            file: file.map(Path::to_path_buf),
        }
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    pub fn state(&self) -> HaltState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Engages (`true`) or releases the switch, persisting it first: a
    /// release that cannot be written is not applied.
    pub fn set(&self, halted: bool, by: &str, reason: Option<String>) -> Result<HaltState, String> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = HaltState {
            halted,
            by: Some(by.to_owned()),
            at: Some(crate::audit::record::timestamp()),
            reason,
        };
        if halted {
            // Containment first: refuse orders even if the file write fails.
            self.halted.store(true, Ordering::Release);
        }
        if let Some(f) = &self.file {
            let bytes = serde_json::to_vec(&next).map_err(|e| e.to_string())?;
            crate::credentials::store::write_atomically(f, &bytes)
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        self.halted.store(halted, Ordering::Release);
        *st = next.clone();
        tracing::warn!(
            halted,
            by,
            reason = next.reason.as_deref(),
            "kill switch changed"
        );
        Ok(next)
    }
}

fn fail_closed(f: &Path, why: &str) -> HaltState {
    tracing::error!(file = %f.display(), error = why, "the halt state cannot be read: trading stays halted");
    HaltState {
        halted: true,
        by: Some("portcullis".into()),
        at: None,
        reason: Some("halt state file unreadable".into()),
    }
}
