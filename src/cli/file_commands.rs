//! `doctor`, `backup` and `restore`: the commands that check the database
//! file, copy it, and put a copy back in its place.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::reading::{self, Reading};
use super::{Error, db_error, erase_now, print_result, signals, tell};
use crate::db::{self, Database};
use crate::doctor::{self, Damage};
use crate::{backup, restore};

/// `doctor`, with a repair if one is asked for: reports what it finds on
/// stdout, and fails if it found a problem.
pub(super) fn doctor(
    path: &Path,
    reindex: bool,
    delete_orphans: bool,
    open_existing: &impl Fn() -> Result<Database, Error>,
) -> Result<(), Error> {
    let files = doctor::file_sizes(path);
    // Only read, unless a repair is asked for: see `reading` for how the
    // file is opened then.
    let reading = if reindex || delete_orphans {
        None
    } else {
        Some(reading::open(path, open_existing)?)
    };
    // A copy gets no TO REPAIR line: a damaged backup is one to replace,
    // not to mend.
    let copy = matches!(reading, Some(Reading::Copy(_)));
    let report = match reading {
        Some(Reading::AsServed(db)) => doctor::examine(&db),
        Some(Reading::Copy(conn)) => doctor::examine_copy(&conn, path),
        Some(Reading::Unwritable { conn, why }) => doctor::examine_unwritable(&conn, path, &why),
        None => {
            let db = open_existing()?;
            if reindex {
                let made = doctor::rebuild_indexes(&db).map_err(db_error(path))?;
                if !made.is_empty() {
                    tell(format_args!(
                        "made the missing index(es) {}",
                        made.join(", ")
                    ));
                }
                tell(format_args!("rebuilt every index from its table's rows"));
            }
            if delete_orphans {
                let Some(orphans) = doctor::delete_orphans(&db).map_err(db_error(path))? else {
                    return Err(Error::DamagedFirst);
                };
                tell(format_args!(
                    "deleted {orphans} orphaned row(s), and what hung off them"
                ));
                erase_now(&db);
            }
            doctor::examine(&db)
        }
    }
    .map_err(db_error(path))?;
    let mut text = format!("{:<13}{}\n", "database", db::describe(path, path));
    let _ = writeln!(text, "{:<13}{files}", "files");
    for (topic, finding) in &report.facts {
        let _ = writeln!(text, "{topic:<13}{finding}");
    }
    for problem in &report.problems {
        let _ = writeln!(text, "PROBLEM      {problem}");
    }
    if let Some(repair) = repair_for(&report).filter(|_| !copy) {
        let _ = writeln!(text, "TO REPAIR    {repair}");
    }
    print_result(&text)?;
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Unhealthy(report.problems.len()))
    }
}

/// `backup OUT`: a checked copy of the database at `path`, written to `out`.
pub(super) fn backup(
    path: &Path,
    out: &Path,
    open_existing: &impl Fn() -> Result<Database, Error>,
) -> Result<(), Error> {
    // Only read: see `reading` for how the file is opened.
    let stop = signals::stop_on_signals()?;
    let copy = reading::open(path, open_existing)?
        .read(|conn| backup::back_up(conn, out, &stop))
        .map_err(db_error(path))?
        .map_err(Error::Backup)?;
    tell(format_args!(
        "backed up {} chat(s), {} bytes, to {}; integrity and foreign keys checked",
        copy.chats,
        copy.bytes,
        out.display()
    ));
    Ok(())
}

/// `restore BACKUP`: the backup's contents, checked, put in place of the
/// database's at `path`, which `open` creates if it is missing.
pub(super) fn restore(
    path: &Path,
    backup: &Path,
    replace: bool,
    open: impl FnOnce(&db::Settings) -> Result<Database, Error>,
) -> Result<(), Error> {
    let stop = signals::stop_on_signals()?;
    let checked = restore::check(backup, path, &stop).map_err(Error::Restore)?;
    // Where a link leads, as `open` creates it.
    let file = db::resolved_path(path).into_owned();
    let new_file = file
        .symlink_metadata()
        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
    let db = open(&db::Settings {
        new_file_page_size: Some(checked.page_size()),
        ..db::Settings::default()
    })?;
    let restored = match restore::restore(&db, &checked, replace, &stop) {
        Ok(restored) => restored,
        Err(e) => {
            if e.copied() {
                // What the backup replaced is gone from the tables all the
                // same; so it goes from the files.
                erase_now(&db);
            } else if new_file {
                // Nothing was copied into the file this command made: it
                // goes, as when the backup was refused before it was made,
                // and "the database was left as it was" holds for a new
                // file too.
                drop(db);
                for file in db::database_files(&file) {
                    let _ = std::fs::remove_file(file);
                }
            }
            return Err(Error::Restore(e));
        }
    };
    let replaced = match restored.before {
        Some(before) if before.is_empty() => String::new(),
        Some(before) => format!(", in place of {before}"),
        None => ", in place of a damaged database".to_owned(),
    };
    let made = match restored.made_indexes.as_slice() {
        [] => String::new(),
        names => format!(
            "; made the index(es) {}, which the backup lacked",
            names.join(", ")
        ),
    };
    tell(format_args!(
        "restored {} from {}{replaced}{made}; integrity and foreign keys checked",
        restored.now,
        backup.display(),
    ));
    erase_now(&db);
    Ok(())
}

/// What `doctor` advises for what it found: the damage first, since
/// orphans can be told apart only in a sound file.
fn repair_for(report: &doctor::Report) -> Option<&'static str> {
    match report.damage {
        Damage::None if report.orphans == 0 => None,
        Damage::None => Some(
            "an orphaned row is one that a cascade should have deleted with its parent: \
             `neptun-local doctor --delete-orphans` deletes them, and what hangs off them",
        ),
        Damage::IndexesOnly => Some(
            "only indexes are damaged or missing, and the rows are whole: `neptun-local \
             doctor --reindex` rebuilds them from the rows, losing nothing, even while a \
             server runs",
        ),
        Damage::Rows => Some(
            "`neptun-local restore BACKUP --replace` puts a backup's contents in its place, \
             even while a server runs (chats deleted since that backup come back)",
        ),
    }
}
