//! The exit statuses tunnelfleet's remote scripts use to say what happened, beyond 0 (done)
//! and 1 (failed, stderr says why): one enum, so that no two meanings share a number by
//! accident and every caller matches on the same names.

/// What a remote script's exit status means (its number is the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteExit {
    /// 2: the script did not get what it needs on stdin (e.g. no identity token).
    NoInput = 2,
    /// 3: another operation holds the fleet lock; its holder record is on stdout.
    LockHeld = 3,
    /// 4: the host changed between the facts and the apply (nothing written; read again).
    Changed = 4,
    /// 5: a Compose command failed (its last lines on stderr): `up` after the files were
    /// written and `current` switched, or the setup component's `compose run`.
    ComposeFailed = 5,
    /// 6: something the script needs is missing or incomplete: the target release of a
    /// switch, the token the setup component should have written.
    Incomplete = 6,
    /// 7: an image could not be had (stderr names it); nothing was switched.
    PullFailed = 7,
}

impl RemoteExit {
    /// Every meaning, in order of status.
    pub const ALL: [RemoteExit; 6] = [
        RemoteExit::NoInput,
        RemoteExit::LockHeld,
        RemoteExit::Changed,
        RemoteExit::ComposeFailed,
        RemoteExit::Incomplete,
        RemoteExit::PullFailed,
    ];

    /// The exit status.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The meaning of an exit status, when it is one of these.
    pub fn from_status(status: Option<u32>) -> Option<RemoteExit> {
        let s = i32::try_from(status?).ok()?;
        RemoteExit::ALL.into_iter().find(|e| e.code() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_meaning_has_its_own_status_and_reads_back() {
        let mut seen = std::collections::BTreeSet::new();
        for e in RemoteExit::ALL {
            assert!(seen.insert(e.code()), "{e:?} shares status {}", e.code());
            assert_eq!(RemoteExit::from_status(Some(e.code() as u32)), Some(e));
        }
        assert_eq!(RemoteExit::from_status(Some(0)), None);
        assert_eq!(RemoteExit::from_status(Some(1)), None);
        assert_eq!(RemoteExit::from_status(None), None);
    }
}
