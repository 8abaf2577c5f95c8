//! The fleet lock on a host: a directory created with `mkdir` (atomic: exactly one of
//! several concurrent runs succeeds), with a holder file describing who holds it.

use super::{ScriptError, check_path, check_value, parent_of, quote};

/// Exit code of [`mkdir_lock`] and [`unlock`] scripts when another run holds the lock; the
/// holder file's content is then on stdout.
pub const LOCK_HELD_EXIT: i32 = 3;

/// Name of the holder file inside the lock directory.
pub const HOLDER_FILE: &str = "holder.json";

/// Builds a script that takes the lock `lock_dir` (creating its parent if needed) and writes
/// `holder_json` (who, when, which operation; no secrets) into `lock_dir/holder.json`.
///
/// Exit 0: lock taken. Exit [`LOCK_HELD_EXIT`]: held by someone else; stdout is the holder
/// file's content (empty if the other run has not written it yet) and stderr says so.
/// Exit 1: the lock could not be created (stderr says why).
pub fn mkdir_lock(lock_dir: &str, holder_json: &str) -> Result<String, ScriptError> {
    check_path(lock_dir)?;
    check_value("lock holder", holder_json)?;
    let l = quote(lock_dir);
    let parent = quote(parent_of(lock_dir));
    let h = quote(&format!("{lock_dir}/{HOLDER_FILE}"));
    let holder = quote(holder_json.trim_end_matches('\n'));
    Ok(format!(
        r#"# tunnelfleet: take lock
umask 022
tf_e=$(mkdir -p -- {parent} 2>&1) || {{ printf 'lock %s: cannot create %s: %s\n' {l} {parent} "${{tf_e##*: }}" >&2; exit 1; }}
if tf_e=$(mkdir -- {l} 2>&1); then
  if tf_e=$( {{ printf '%s\n' {holder} > {h}; }} 2>&1 ); then exit 0; fi
  rm -f -- {h}; rmdir -- {l}
  printf 'lock %s: cannot write holder file: %s (lock not taken)\n' {l} "${{tf_e##*: }}" >&2
  exit 1
fi
if [ -d {l} ]; then
  printf 'lock %s: held by another run (holder on stdout); wait for it or remove the lock if that run is dead\n' {l} >&2
  cat -- {h} 2>/dev/null
  exit {LOCK_HELD_EXIT}
fi
printf 'lock %s: %s\n' {l} "${{tf_e##*: }}" >&2
exit 1
"#
    ))
}

/// Builds a script that releases the lock if `holder_json` is the holder (the same text given
/// to [`mkdir_lock`]). Not locked: exit 0 (releasing twice is fine). Held by someone else: exit
/// [`LOCK_HELD_EXIT`], the actual holder on stdout, nothing removed.
pub fn unlock(lock_dir: &str, holder_json: &str) -> Result<String, ScriptError> {
    check_path(lock_dir)?;
    check_value("lock holder", holder_json)?;
    let l = quote(lock_dir);
    let h = quote(&format!("{lock_dir}/{HOLDER_FILE}"));
    let holder = quote(holder_json.trim_end_matches('\n'));
    Ok(format!(
        r#"# tunnelfleet: release lock
if [ ! -d {l} ]; then exit 0; fi
tf_h=$(cat -- {h} 2>/dev/null)
if [ "$tf_h" != {holder} ]; then
  printf 'unlock %s: held by another run (holder on stdout); not removed\n' {l} >&2
  printf '%s\n' "$tf_h"
  exit {LOCK_HELD_EXIT}
fi
{release}"#,
        release = release(&l, &h)
    ))
}

/// Builds a script that removes the lock whoever holds it (for an operator who checked that
/// the holder is dead). Not locked: exit 0. Refuses (exit 1) if the lock directory holds
/// anything besides the holder file.
pub fn force_unlock(lock_dir: &str) -> Result<String, ScriptError> {
    check_path(lock_dir)?;
    let l = quote(lock_dir);
    let h = quote(&format!("{lock_dir}/{HOLDER_FILE}"));
    Ok(format!(
        "# tunnelfleet: force release lock\nif [ ! -d {l} ]; then exit 0; fi\n{}",
        release(&l, &h)
    ))
}

fn release(l: &str, h: &str) -> String {
    format!(
        r#"tf_e=$( {{ rm -f -- {h} && rmdir -- {l}; }} 2>&1 ) || {{ printf 'unlock %s: %s\n' {l} "${{tf_e##*: }}" >&2; exit 1; }}
exit 0
"#
    )
}
