//! The fleet lock on a host: a directory created with `mkdir` (atomic: exactly one of
//! several concurrent runs succeeds), with a holder file describing who holds it.

use super::{ScriptError, check_path, check_value, parent_of, quote};

/// Exit code of [`mkdir_lock`] and [`unlock`] scripts when another run holds the lock; the
/// holder file's content is then on stdout ([`super::RemoteExit::LockHeld`]).
pub const LOCK_HELD_EXIT: i32 = super::RemoteExit::LockHeld.code();

/// Name of the holder file inside the lock directory.
pub const HOLDER_FILE: &str = "holder.json";

/// Builds a script that takes the lock `lock_dir` (creating its parent if needed) and writes
/// `holder_json` (who, when, which operation; no secrets) into `lock_dir/holder.json`.
///
/// Exit 0: lock taken. Exit [`LOCK_HELD_EXIT`]: held by someone else; stdout is the holder
/// file's content (empty if the other run has not written it yet) and stderr says so.
/// Exit 1: the lock could not be created (stderr says why).
///
/// A lock taken by [`script_lock`] in an earlier boot of the host is stale (nothing of that
/// boot runs any more): it is removed and the lock taken.
pub fn mkdir_lock(lock_dir: &str, holder_json: &str) -> Result<String, ScriptError> {
    take(lock_dir, holder_json, false)
}

/// Like [`mkdir_lock`], for a lock held only while the script that takes it runs (a change
/// script: apply, switch, prune). The lock also records the host's boot (a marker in `/run`,
/// a tmpfs that a reboot empties, created on first use; none when `/run` is not writable), so
/// a lock left by a script the host's reboot killed is recognised as stale by the next taker
/// instead of blocking every later run until `tunnelfleet unlock`.
pub fn script_lock(lock_dir: &str, holder_json: &str) -> Result<String, ScriptError> {
    take(lock_dir, holder_json, true)
}

/// The marker of the host's current boot (created on first use, exclusively).
const BOOT_MARKER: &str = "/run/tunnelfleet.boot";
/// The file in a lock directory recording the boot the lock was taken in.
const LOCK_BOOT_FILE: &str = "boot";

fn take(lock_dir: &str, holder_json: &str, boot_bound: bool) -> Result<String, ScriptError> {
    check_path(lock_dir)?;
    check_value("lock holder", holder_json)?;
    let l = quote(lock_dir);
    let parent = quote(parent_of(lock_dir));
    let h = quote(&format!("{lock_dir}/{HOLDER_FILE}"));
    let b = quote(&format!("{lock_dir}/{LOCK_BOOT_FILE}"));
    let stale = quote(&format!("{lock_dir}.stale"));
    let holder = quote(holder_json.trim_end_matches('\n'));
    let marker = quote(BOOT_MARKER);
    let record_boot = if boot_bound {
        format!(
            "tf_bm=$(cat {marker} 2>/dev/null)\n\
             if [ -z \"$tf_bm\" ]; then ( set -C; printf '%s\\n' \"$(date +%s)-$$\" > {marker} ) 2>/dev/null; tf_bm=$(cat {marker} 2>/dev/null); fi\n\
             if [ -n \"$tf_bm\" ]; then printf '%s\\n' \"$tf_bm\" > {b} 2>/dev/null || rm -f -- {b}; fi\n"
        )
    } else {
        String::new()
    };
    Ok(format!(
        r#"# tunnelfleet: take lock
umask 022
tf_e=$(mkdir -p -- {parent} 2>&1) || {{ printf 'lock %s: cannot create %s: %s\n' {l} {parent} "${{tf_e##*: }}" >&2; exit 1; }}
tf_try=0
while :; do
if tf_e=$(mkdir -- {l} 2>&1); then
  if tf_e=$( {{ printf '%s\n' {holder} > {h}; }} 2>&1 ); then
{record_boot}    exit 0
  fi
  rm -f -- {h}; rmdir -- {l}
  printf 'lock %s: cannot write holder file: %s (lock not taken)\n' {l} "${{tf_e##*: }}" >&2
  exit 1
fi
if [ -d {l} ] && [ "$tf_try" = 0 ] && [ -f {b} ]; then
  tf_lb=$(cat -- {b} 2>/dev/null); tf_cb=$(cat {marker} 2>/dev/null)
  if [ -n "$tf_lb" ] && [ "$tf_lb" != "$tf_cb" ] && mv -T -- {l} {stale}.$$ 2>/dev/null; then
    tf_try=1
    if [ "$(cat -- {stale}.$$/{lbf} 2>/dev/null)" = "$tf_lb" ]; then
      printf 'lock %s: removed a lock left by a run the host'"'"'s reboot ended: %s\n' {l} "$(cat -- {stale}.$$/{hf} 2>/dev/null)" >&2
      rm -rf -- {stale}.$$
    else
      mv -T -- {stale}.$$ {l} 2>/dev/null || rm -rf -- {stale}.$$
    fi
    continue
  fi
fi
break
done
if [ -d {l} ]; then
  printf 'lock %s: held by another run (holder on stdout); wait for it or remove the lock if that run is dead\n' {l} >&2
  cat -- {h} 2>/dev/null
  exit {LOCK_HELD_EXIT}
fi
printf 'lock %s: %s\n' {l} "${{tf_e##*: }}" >&2
exit 1
"#,
        lbf = LOCK_BOOT_FILE,
        hf = HOLDER_FILE,
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
/// anything besides the holder file (and the boot record of a [`script_lock`]).
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
        r#"tf_e=$( {{ rm -f -- {h} {l}/{LOCK_BOOT_FILE} && rmdir -- {l}; }} 2>&1 ) || {{ printf 'unlock %s: %s\n' {l} "${{tf_e##*: }}" >&2; exit 1; }}
exit 0
"#
    )
}
