//! `neptun-local doctor`: checks a database file and reports what it finds.
//!
//! Read-only apart from what opening always does (WAL mode, migration to the
//! current schema) and, when asked for, the repair of indexes. A copy in
//! rollback-journal mode, as `backup` writes them, is opened read-only and
//! left as it is, so that a backup can be checked, even when it is itself
//! read-only, without being turned into a WAL database; so is a database
//! that this user cannot write, which is checked all the same. Returns the
//! facts to print, the problems that make the command exit non-zero, and
//! how far any damage goes, which decides the repair to advise.

use std::path::Path;

use rusqlite::Connection;

use crate::db::{self, Database};

/// What every message that meets a damaged file says to do: `doctor` tells
/// which repair fits.
pub const SEE_DOCTOR: &str = "`neptun-local doctor` says where, and how to repair it";

/// What the doctor found.
#[derive(Default)]
pub struct Report {
    /// (topic, finding), in the order they should be printed.
    pub facts: Vec<(&'static str, String)>,
    /// Anything that needs an operator's attention; empty when all is well.
    pub problems: Vec<String>,
    /// What SQLite found damaged, which decides the repair.
    pub damage: Damage,
    /// Rows whose parent is gone (`foreign_key_check`).
    pub orphans: usize,
}

/// How far the damage SQLite found goes, from none to the worst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Damage {
    #[default]
    None,
    /// Only index entries disagree with the rows they index: `REINDEX`
    /// rebuilds them from the rows, and nothing is lost.
    IndexesOnly,
    /// Rows or pages themselves: only a backup brings them back.
    Rows,
}

impl Report {
    fn found(&mut self, damage: Damage) {
        self.damage = self.damage.max(damage);
    }
}

/// Examines the database behind `db`. SQLite opens a file that this user
/// may not write (or whose `-wal` it may not) read-only, without a word; it
/// is then examined as one that could not be opened to write.
pub fn examine(db: &Database) -> db::Result<Report> {
    if let Err(e) = db.check_writable() {
        let db::Error::NoAccess(why) = e else {
            return Err(e);
        };
        return db.with_connection(|conn| examine_unwritable(conn, db.path(), &why));
    }
    let mut report = Report::default();
    check_access(db.path(), &mut report);
    db.with_connection(|conn| {
        examine_connection(conn, db.path(), Journal::MustBeWal, &mut report)
    })?;
    Ok(report)
}

/// Makes again every index of the schema that the file lacks, and rebuilds
/// every index from its table's rows (SQLite's `REINDEX`), in one write
/// transaction: the repair for [`Damage::IndexesOnly`], which loses
/// nothing. Returns the names of the indexes made again. A running
/// server's deletes wait for it, as for any writer.
pub fn rebuild_indexes(db: &Database) -> db::Result<Vec<String>> {
    db.write(|tx| {
        let made = db::make_missing_indexes(tx)?;
        tx.execute_batch("REINDEX")?;
        Ok(made)
    })
}

/// Deletes every orphaned row, and what hangs off it, in one write
/// transaction; returns how many orphans there were. An orphan is a row
/// whose parent is gone: every foreign key here cascades, so it is a row
/// that a cascade should have deleted (one written with foreign keys off, or
/// missed by a damaged index), and it may hold a deleted chat's text.
///
/// `None`, changing nothing, if the file is damaged: a damaged index can
/// hide a parent, and its children would be taken for orphans.
pub fn delete_orphans(db: &Database) -> db::Result<Option<usize>> {
    // Checked before the write transaction: damage that stops the check
    // also fails the transaction's commit.
    match db.with_connection(|conn| integrity_check(conn)) {
        Ok(lines) if lines == ["ok"] => {}
        Ok(_) | Err(db::Error::Damaged(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    db.write(|tx| {
        let mut deleted = 0;
        // Deleting an orphan cascades to its children, so one pass empties
        // foreign_key_check, and a second finds it empty. A pass that
        // deletes nothing ends it too: what is left, the report shows.
        let mut progress = true;
        while progress {
            let broken: Vec<(String, i64)> = tx
                .prepare("SELECT DISTINCT \"table\", fkid FROM pragma_foreign_key_check")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let before = deleted;
            for (table, key) in broken {
                let (column, parent, parent_column): (String, String, String) = tx.query_row(
                    "SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1) \
                     WHERE id = ?2",
                    rusqlite::params![table, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let [table, column, parent, parent_column] =
                    [table, column, parent, parent_column].map(|name| quoted(&name));
                deleted += tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE {column} IS NOT NULL \
                         AND {column} NOT IN (SELECT {parent_column} FROM {parent})"
                    ),
                    [],
                )?;
            }
            progress = deleted > before;
        }
        Ok(Some(deleted))
    })
}

/// An SQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Examines a copy in rollback-journal mode (see [`db::is_rollback_journal_file`])
/// at `path`, through `conn`, a read-only connection to it, changing
/// nothing in it.
pub fn examine_copy(conn: &Connection, path: &Path) -> db::Result<Report> {
    let opened = "read-only, and left as it is: a copy in rollback-journal mode, as `backup` \
                  writes them (a server started on it switches it to WAL)";
    examine_read_only(conn, path, opened, None, Journal::AsCopied)
}

/// Examines the database at `path`, which this user cannot open to write
/// (`why` says why), through `conn`, a read-only connection to it. That is
/// a problem, as a server would refuse it, but the rest is checked as for
/// any database: it may be a snapshot to restore from, or a file to mend.
pub fn examine_unwritable(conn: &Connection, path: &Path, why: &str) -> db::Result<Report> {
    let opened = "read-only, as this user cannot write it";
    examine_read_only(
        conn,
        path,
        opened,
        Some(format!("{why} (a server would refuse to start on it)")),
        Journal::MustBeWal,
    )
}

fn examine_read_only(
    conn: &Connection,
    path: &Path,
    opened: &str,
    problem: Option<String>,
    journal: Journal,
) -> db::Result<Report> {
    let mut report = Report::default();
    report.facts.push(("opened", opened.to_owned()));
    check_access(path, &mut report);
    report.problems.extend(problem);
    examine_connection(conn, path, journal, &mut report)?;
    Ok(report)
}

/// What the journal mode should be.
#[derive(Clone, Copy, PartialEq)]
enum Journal {
    /// A database a server uses: WAL, or deletes would wait on readers.
    MustBeWal,
    /// A copy: as `VACUUM INTO` wrote it.
    AsCopied,
}

/// Examines the database at `path` through `conn`, a connection to it.
fn examine_connection(
    conn: &Connection,
    path: &Path,
    journal: Journal,
    report: &mut Report,
) -> db::Result<()> {
    check_settings(conn, path, journal, report)?;
    check_schema(conn, report)?;
    count_pages(conn, report)?;
    // A damaged table may fail a count; integrity_check then says where.
    match count_rows(conn, report) {
        Err(db::Error::Damaged(cause)) => {
            report.found(Damage::Rows);
            report
                .facts
                .push(("rows", format!("could not be counted (sqlite: {cause})")));
        }
        other => other?,
    }
    check_integrity(conn, report)
}

fn pragma<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> rusqlite::Result<T> {
    conn.pragma_query_value(None, name, |r| r.get(0))
}

fn check_settings(
    conn: &Connection,
    path: &Path,
    expected: Journal,
    report: &mut Report,
) -> db::Result<()> {
    let version: i64 = pragma(conn, "user_version")?;
    // A WAL database read as it is (`db::open_read_only`, where no -shm can
    // be made) is read without its WAL, and SQLite then reports "delete";
    // the file's header says what it is.
    let journal: String = if db::is_wal_file(path) {
        "wal".to_owned()
    } else {
        pragma(conn, "journal_mode")?
    };
    let synchronous: i64 = pragma(conn, "synchronous")?;
    let secure_delete: i64 = pragma(conn, "secure_delete")?;
    let auto_vacuum: i64 = pragma(conn, "auto_vacuum")?;
    let foreign_keys: i64 = pragma(conn, "foreign_keys")?;
    let synchronous_name = match synchronous {
        0 => "off",
        1 => "normal",
        2 => "full",
        _ => "extra",
    };
    let auto_vacuum_name = match auto_vacuum {
        0 => "none",
        1 => "full",
        _ => "incremental",
    };
    report.facts.push(("schema", format!("version {version}")));
    report.facts.push((
        "pragmas",
        format!(
            "journal_mode={journal} synchronous={synchronous_name} secure_delete={secure_delete} \
             auto_vacuum={auto_vacuum_name} foreign_keys={foreign_keys}"
        ),
    ));
    let mut problem = |bad: bool, text: &str| {
        if bad {
            report.problems.push(text.to_owned());
        }
    };
    problem(
        expected == Journal::MustBeWal && !journal.eq_ignore_ascii_case("wal"),
        "the database is not in WAL mode",
    );
    problem(
        synchronous < 2,
        "synchronous is below FULL: acknowledged deletes may not survive power loss",
    );
    problem(
        secure_delete != 1,
        "secure_delete is off: deleted content stays in the file",
    );
    problem(
        auto_vacuum != 2,
        "auto_vacuum is not INCREMENTAL: the file will not shrink after deletes",
    );
    problem(
        foreign_keys != 1,
        "foreign keys are not enforced: deletes would leave orphans",
    );
    Ok(())
}

/// The tables and indexes of the schema that the file lacks (dropped by
/// hand, say): `integrity_check` finds nothing wrong without them.
fn check_schema(conn: &Connection, report: &mut Report) -> db::Result<()> {
    let missing = match db::missing_from_schema(conn).map_err(db::Error::from) {
        // integrity_check says what.
        Err(db::Error::Damaged(_)) => return Ok(()),
        other => other?,
    };
    for db::Missing { kind, name, .. } in missing {
        if kind == "index" {
            report.found(Damage::IndexesOnly);
            report.problems.push(format!(
                "the index {name} is missing: a delete reads all of its table to find the \
                 rows to delete with the chat"
            ));
        } else {
            report.found(Damage::Rows);
            report.problems.push(format!(
                "the {kind} {name} is missing, and the rows it held"
            ));
        }
    }
    Ok(())
}

fn count_pages(conn: &Connection, report: &mut Report) -> db::Result<()> {
    let page_size: i64 = pragma(conn, "page_size")?;
    let page_count: i64 = pragma(conn, "page_count")?;
    let freelist: i64 = pragma(conn, "freelist_count")?;
    report.facts.push((
        "pages",
        format!("{page_count} of {page_size} bytes, {freelist} free"),
    ));
    Ok(())
}

fn count_rows(conn: &Connection, report: &mut Report) -> db::Result<()> {
    let tables = [
        "users",
        "sessions",
        "chats",
        "messages",
        "chat_files",
        "chat_shares",
    ];
    let mut counts = Vec::with_capacity(tables.len());
    for table in tables {
        // One dropped by hand is a problem of its own (see check_schema).
        if !db::has_object(conn, "table", table)? {
            counts.push(format!("{table}=missing"));
            continue;
        }
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        counts.push(format!("{table}={n}"));
    }
    let expired: i64 = conn.query_row(
        "SELECT count(*) FROM sessions WHERE expires_at <= unixepoch()",
        [],
        |r| r.get(0),
    )?;
    report.facts.push((
        "rows",
        format!("{} (expired sessions={expired})", counts.join(" ")),
    ));
    Ok(())
}

/// What [`check_integrity`] finds wrong; empty when nothing is. What
/// `backup` reads its copy back with, and `restore` a backup and its result.
pub fn integrity_problems(conn: &Connection) -> db::Result<Vec<String>> {
    let mut report = Report::default();
    check_integrity(conn, &mut report)?;
    Ok(report.problems)
}

/// `integrity_check` and `foreign_key_check`.
pub fn check_integrity(conn: &Connection, report: &mut Report) -> db::Result<()> {
    let integrity = match integrity_check(conn) {
        // Damage that stops the check itself (a page that is not a b-tree
        // page at all) is a finding too, not a failure to examine.
        Err(db::Error::Damaged(cause)) => vec![format!("the check stopped (sqlite: {cause})")],
        other => other?,
    };
    let ok = integrity == ["ok"];
    report.facts.push((
        "integrity",
        if ok {
            "ok".into()
        } else {
            integrity.join("; ")
        },
    ));
    if !ok {
        report.found(if integrity.iter().all(|l| is_index_entry_problem(l)) {
            Damage::IndexesOnly
        } else {
            Damage::Rows
        });
        report
            .problems
            .push(format!("integrity_check failed: {}", integrity.join("; ")));
    }

    let violations = match foreign_key_check(conn) {
        Err(db::Error::Damaged(_)) if report.damage > Damage::None => {
            report
                .facts
                .push(("foreign keys", "not checked: the file is damaged".into()));
            return Ok(());
        }
        other => other?,
    };
    report.facts.push((
        "foreign keys",
        if violations.is_empty() {
            "ok".into()
        } else {
            format!("{} violations", violations.len())
        },
    ));
    report.orphans = violations.len();
    if !violations.is_empty() {
        let shown: Vec<&str> = violations.iter().take(10).map(String::as_str).collect();
        report
            .problems
            .push(format!("orphaned rows: {}", shown.join(", ")));
    }
    Ok(())
}

/// Whether an `integrity_check` line is about an index entry alone, which
/// `REINDEX` rebuilds from the table: SQLite's words for an entry that is
/// missing, extra, or differs from its row. Not "non-unique entry in index":
/// there the rows themselves break the index's rule, and `REINDEX` fails.
fn is_index_entry_problem(line: &str) -> bool {
    (line.starts_with("row ")
        && (line.contains(" missing from index ") || line.contains(" values differ from index ")))
        || line.starts_with("rowid not at end-of-record for row ")
        || line.starts_with("wrong # of entries in index ")
        || (line.starts_with("index ")
            && line.contains(" stores an imprecise floating-point value"))
}

fn integrity_check(conn: &Connection) -> db::Result<Vec<String>> {
    Ok(conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// One line per orphaned row: `table row ROWID -> PARENT`, without the
/// rowid for a table that has none (`sessions` is WITHOUT ROWID).
fn foreign_key_check(conn: &Connection) -> db::Result<Vec<String>> {
    Ok(conn
        .prepare("PRAGMA foreign_key_check")?
        .query_map([], |r| {
            let table: String = r.get(0)?;
            let parent: String = r.get(2)?;
            Ok(match r.get::<_, Option<i64>>(1)? {
                Some(rowid) => format!("{table} row {rowid} -> {parent}"),
                None => format!("{table} row -> {parent}"),
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// On Unix, a database file that other users of the machine may read or
/// write is a problem: it holds every chat. New files are created 0600.
///
/// So are the `-wal` and `-shm` beside it, which hold recent pages (a
/// deleted chat's too, until the next checkpoint). SQLite gives them the
/// database's mode when it makes them, so they differ from it only if
/// the database's was changed while a server had them open: after
/// `chmod 600 neptun.db`, say. They are looked at only once the database
/// file is right, so that each piece of advice names files that stay.
///
/// A database file with a second name (a hard link) is a problem, too, on
/// every platform: see [`db::more_than_one_name`].
fn check_access(db_path: &Path, report: &mut Report) {
    report.problems.extend(db::more_than_one_name(db_path));
    #[cfg(unix)]
    {
        let Some(mode) = db::permission_bits(db_path) else {
            return;
        };
        report.facts.push(("mode", format!("{mode:04o}")));
        if let Some(problem) = db::open_to_other_users(db_path) {
            report.problems.push(problem);
            return;
        }
        report.problems.extend(
            ["-wal", "-shm"]
                .map(|suffix| db::side_file(db_path, suffix))
                .iter()
                .filter_map(|side_file| db::side_file_open_to_other_users(side_file)),
        );
    }
}

/// The sizes of the database file and of the `-wal` and `-shm` beside it,
/// or that one is absent. Read before the database is opened: opening it
/// makes the `-wal` and `-shm` that a server would have left, and the
/// report would show those.
pub fn file_sizes(db_path: &Path) -> String {
    let size = |path: &Path| {
        std::fs::metadata(path).map_or("absent".to_owned(), |m| format!("{} bytes", m.len()))
    };
    format!(
        "db {}, wal {}, shm {}",
        size(db_path),
        size(&db::side_file(db_path, "-wal")),
        size(&db::side_file(db_path, "-shm"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's own words (sqlite3.c, `integrity_check`), each line as it
    /// prints it.
    #[test]
    fn only_index_entry_problems_count_as_damage_to_indexes_alone() {
        for index_only in [
            "row 1 missing from index messages_chat_id",
            "row 7 values differ from index chats_user_id",
            "rowid not at end-of-record for row 3 of index messages_chat_id",
            "wrong # of entries in index messages_chat_id",
            "index chats_user_id stores an imprecise floating-point value for row 2",
        ] {
            assert!(is_index_entry_problem(index_only), "{index_only}");
        }
        for worse in [
            "non-unique entry in index sqlite_autoindex_users_1",
            "Tree 10 page 10: btreeInitPage() returns error code 11",
            "*** in database main ***\nPage 12: never used",
            "NULL value in messages.chat_id",
            "the check stopped (sqlite: database disk image is malformed)",
        ] {
            assert!(!is_index_entry_problem(worse), "{worse}");
        }
    }
}
