//! The schema and its version: a new file gets it, one of ours is left
//! as it is, and a newer version or another application's file is refused.
//! What a file of ours lacks of it (a table or an index dropped by hand)
//! is named for `doctor`, which can make an index again.

use rusqlite::{Connection, TransactionBehavior};

use super::{Error, Result};

/// The schema, applied once to a new database file.
const SCHEMA: &str = include_str!("../../schema.sql");

/// The `PRAGMA user_version` that `SCHEMA` produces. Bump it, and teach
/// `migrate` the step from the previous version, whenever the schema changes.
pub const SCHEMA_VERSION: i64 = 1;

/// Brings a database file to [`SCHEMA_VERSION`].
///
/// Rules: a file with nothing in it is new and gets the whole schema; the
/// current version is left alone; a newer version is refused; and another
/// application's database is refused before anything in it changes. The
/// check and the change run in one IMMEDIATE transaction, so two processes
/// opening a new file at once cannot both apply the schema.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let found = ours(conn)?;
    // auto_vacuum only takes effect before the first table is created, and the
    // journal mode is stored in the file, so both are set here, once.
    if found == Found::Empty {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("could not switch the database to WAL mode (it is in {mode} mode)");
    }
    match found {
        // Nothing to write, so no write lock to wait for: a start, or a
        // command that only reads, goes ahead while another process holds
        // a long write transaction (an sqlite3 shell), and only the writes
        // wait for it, as long as --busy-timeout allows.
        Found::Version(SCHEMA_VERSION) => return Ok(()),
        Found::Version(found) => return Err(Error::SchemaTooNew { found }),
        Found::Empty => {}
    }

    // Looked at again under the write lock: another process may have
    // created the schema since.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match ours(&tx)? {
        Found::Empty => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Found::Version(SCHEMA_VERSION) => {}
        Found::Version(found) => return Err(Error::SchemaTooNew { found }),
    }
    tx.commit()?;
    Ok(())
}

/// What [`ours`] found in a database file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Nothing at all: a new file.
    Empty,
    /// Our tables, at this schema version.
    Version(i64),
}

/// Tells a new file and one of ours apart from another application's
/// SQLite database (which fails with [`Error::Foreign`]): the schema would
/// clash with its tables, switching it to WAL mode would change it, and a
/// schema version of its own must not be read as one of ours.
pub(super) fn ours(conn: &Connection) -> Result<Found> {
    let (objects, our_tables): (i64, i64) = conn.query_row(
        "SELECT count(*),
                count(*) FILTER (WHERE type = 'table'
                                   AND name IN ('users', 'sessions', 'chats', 'messages'))
         FROM sqlite_schema",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    match user_version(conn)? {
        0 if objects == 0 => Ok(Found::Empty),
        version if version > 0 && our_tables == 4 => Ok(Found::Version(version)),
        _ => Err(Error::Foreign),
    }
}

/// A table or an index of the schema that a database lacks.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing {
    /// `table` or `index`.
    pub kind: String,
    pub name: String,
    /// The table it is, or indexes.
    table: String,
    /// The statement that makes it.
    sql: String,
}

/// The tables and indexes of the schema that the database behind `conn`
/// lacks, in the schema's order: dropped by hand, say, since a file of ours
/// is never migrated again. Without its index, every delete scans a whole
/// child table for the rows to cascade to; without a table, its rows are
/// gone.
/// The indexes of a missing table are not named: they went with it.
pub fn missing_from_schema(conn: &Connection) -> rusqlite::Result<Vec<Missing>> {
    let expected = Connection::open_in_memory()?;
    expected.execute_batch(SCHEMA)?;
    let mut objects = expected.prepare(
        // Not the indexes SQLite makes for a table's constraints, whose
        // `sql` is NULL: they come and go with their table.
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL \
         ORDER BY rowid",
    )?;
    let mut missing = Vec::new();
    for object in objects.query_map([], |r| {
        Ok(Missing {
            kind: r.get(0)?,
            name: r.get(1)?,
            table: r.get(2)?,
            sql: r.get(3)?,
        })
    })? {
        let object = object?;
        if !has_object(conn, &object.kind, &object.name)? {
            missing.push(object);
        }
    }
    let tables: Vec<String> = missing
        .iter()
        .filter(|m| m.kind == "table")
        .map(|m| m.name.clone())
        .collect();
    missing.retain(|m| m.kind == "table" || !tables.contains(&m.table));
    Ok(missing)
}

/// Whether the database behind `conn` has the `kind` (`table` or `index`)
/// named `name`.
pub fn has_object(conn: &Connection, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = ?1 AND name = ?2",
        [kind, name],
        |r| r.get(0),
    )
}

/// Makes again, in `tx`, the indexes the database lacks whose table it
/// has; returns their names. (A missing table needs a backup, which
/// brings its indexes too.)
pub fn make_missing_indexes(tx: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut made = Vec::new();
    for index in missing_from_schema(tx)?
        .into_iter()
        .filter(|m| m.kind == "index")
    {
        tx.execute_batch(&index.sql)?;
        made.push(index.name);
    }
    Ok(made)
}

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::open_temp;
    use crate::db::{Database, Settings};

    #[test]
    fn a_new_database_gets_the_schema_version_and_incremental_auto_vacuum() {
        let (_dir, db) = open_temp();
        db.with_connection(|c| {
            assert_eq!(user_version(c)?, SCHEMA_VERSION);
            let auto_vacuum: i64 = c.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
            assert_eq!(auto_vacuum, 2, "2 = INCREMENTAL");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn reopening_keeps_data_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Database::open(&path, &Settings::default())
            .unwrap()
            .add_user("u", None)
            .unwrap();
        let db = Database::open(&path, &Settings::default()).unwrap();
        assert!(db.user_exists("u").unwrap());
        db.with_connection(|c| Ok(c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?))
            .unwrap();
        drop(db);
        match Database::open(&path, &Settings::default()) {
            Err(Error::SchemaTooNew { found }) => assert_eq!(found, SCHEMA_VERSION + 1),
            other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
        }
    }

    /// A `--db` that names another application's SQLite file by mistake must
    /// not be changed: before, it was switched to WAL mode, and the schema
    /// failed on its `users` table with an error quoting all of schema.sql.
    #[test]
    fn another_applications_database_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        // Without a schema version, and with one of its own (as Firefox's
        // places.sqlite has, for one), which is not ours.
        for (name, version) in [("other.db", 0), ("versioned.db", 70)] {
            let path = dir.path().join(name);
            Connection::open(&path)
                .unwrap()
                .execute_batch(&format!(
                    "CREATE TABLE users (id TEXT); INSERT INTO users VALUES ('x');
                     PRAGMA user_version = {version};"
                ))
                .unwrap();
            let before = std::fs::read(&path).unwrap();
            match Database::open(&path, &Settings::default()) {
                Err(Error::Foreign) => {}
                other => panic!("{name}: expected Foreign, got {:?}", other.map(|_| ())),
            }
            assert_eq!(std::fs::read(&path).unwrap(), before, "{name} changed");
            let journal: String = Connection::open(&path)
                .unwrap()
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(journal, "delete", "{name}");
        }

        // An SQLite file with nothing in it yet is as good as a new one.
        let empty = dir.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("VACUUM")
            .unwrap();
        let db = Database::open(&empty, &Settings::default()).unwrap();
        let version = db.with_connection(|c| Ok(user_version(c)?)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// A table or an index dropped by hand is named; an index is made again
    /// from the schema, and the indexes of a dropped table go unnamed.
    #[test]
    fn what_the_schema_has_and_the_file_lacks_is_named_and_indexes_made_again() {
        let (_dir, db) = open_temp();
        let named = |c: &Connection| -> rusqlite::Result<Vec<(String, String)>> {
            Ok(missing_from_schema(c)?
                .into_iter()
                .map(|m| (m.kind, m.name))
                .collect())
        };
        db.with_connection(|c| {
            assert_eq!(named(c)?, []);
            c.execute_batch(
                "DROP INDEX messages_chat_id; DROP INDEX chat_files_message_id;
                 DROP TABLE chat_share_whitelist_entries;",
            )?;
            let owned = |kind: &str, name: &str| (kind.to_owned(), name.to_owned());
            assert_eq!(
                named(c)?,
                [
                    owned("index", "messages_chat_id"),
                    owned("index", "chat_files_message_id"),
                    owned("table", "chat_share_whitelist_entries"),
                ]
            );
            assert_eq!(
                make_missing_indexes(c)?,
                ["messages_chat_id", "chat_files_message_id"]
            );
            assert_eq!(named(c)?, [owned("table", "chat_share_whitelist_entries")]);
            Ok(())
        })
        .unwrap();
    }

    /// Every foreign key's child column must lead some index; otherwise each
    /// chat delete scans that whole child table.
    #[test]
    fn every_foreign_key_child_column_is_indexed() {
        let (_dir, db) = open_temp();
        let unindexed = db
            .with_connection(|c| {
                let mut stmt = c.prepare(
                    "SELECT m.name, fk.\"from\"
                     FROM sqlite_master AS m, pragma_foreign_key_list(m.name) AS fk
                     WHERE m.type = 'table'
                       AND NOT EXISTS (
                         SELECT 1 FROM pragma_index_list(m.name) AS il,
                                       pragma_index_info(il.name) AS ii
                         WHERE ii.seqno = 0 AND ii.name = fk.\"from\")
                       AND NOT EXISTS (
                         SELECT 1 FROM pragma_table_info(m.name) AS ti
                         WHERE ti.pk = 1 AND ti.name = fk.\"from\")",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(format!(
                        "{}.{}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .unwrap();
        let fk_count: i64 = db
            .with_connection(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM sqlite_master AS m, pragma_foreign_key_list(m.name)
                     WHERE m.type = 'table'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(fk_count, 8, "the query must see the schema's foreign keys");
        assert!(
            unindexed.is_empty(),
            "foreign keys without an index: {unindexed:?}"
        );
    }
}
