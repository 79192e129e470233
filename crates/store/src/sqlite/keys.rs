//! Raw access to sealed columns for key rotation and status (see [`crate::crypto`]).

use rusqlite::params_from_iter;
use rusqlite::types::Value as SqlValue;

use super::SqliteStore;
use crate::Result;
use crate::crypto::{CellSwap, KeyPart, Keys, RawRow, SealedTable};

fn sql_key(k: &KeyPart) -> SqlValue {
    match k {
        KeyPart::Text(s) => SqlValue::Text(s.clone()),
        KeyPart::Int(i) => SqlValue::Integer(*i),
    }
}

impl SqliteStore {
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Up to `limit` rows of `table` after the key `after`, in key order, with the stored
    /// text of each sealed column.
    pub(crate) async fn sealed_page(
        &self,
        table: &'static SealedTable,
        after: Option<Vec<KeyPart>>,
        limit: usize,
    ) -> Result<Vec<RawRow>> {
        self.read(move |c| {
            let keys: Vec<&str> = table.key.iter().map(|(k, _)| *k).collect();
            let cols: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
            let key_list = keys.join(", ");
            let filter = match &after {
                Some(_) => {
                    let marks: Vec<String> = (1..=keys.len()).map(|i| format!("?{i}")).collect();
                    format!("WHERE ({key_list}) > ({})", marks.join(", "))
                }
                None => String::new(),
            };
            let sql = format!(
                "SELECT {key_list}, {} FROM {} {filter} ORDER BY {key_list} LIMIT {limit}",
                cols.join(", "),
                table.name
            );
            let args: Vec<SqlValue> = after.iter().flatten().map(sql_key).collect();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| {
                    let mut key = Vec::with_capacity(keys.len());
                    for (i, (_, int)) in table.key.iter().enumerate() {
                        key.push(if *int {
                            KeyPart::Int(r.get(i)?)
                        } else {
                            KeyPart::Text(r.get(i)?)
                        });
                    }
                    let mut cells = Vec::with_capacity(cols.len());
                    for i in 0..cols.len() {
                        cells.push(r.get::<_, Option<String>>(keys.len() + i)?);
                    }
                    Ok(RawRow { key, cells })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Applies each swap while its cell still holds the old text, in one write; returns how
    /// many were applied.
    pub(crate) async fn swap_sealed(
        &self,
        table: &'static SealedTable,
        swaps: Vec<CellSwap>,
    ) -> Result<usize> {
        self.write(move |c| {
            let mut done = 0;
            for s in &swaps {
                let col = table.columns[s.column].0;
                let mut cond = String::new();
                for (i, (k, _)) in table.key.iter().enumerate() {
                    cond.push_str(&format!("{k} = ?{} AND ", i + 3));
                }
                let sql = format!(
                    "UPDATE {} SET {col} = ?1 WHERE {cond}{col} = ?2",
                    table.name
                );
                let mut args = vec![SqlValue::Text(s.new.clone()), SqlValue::Text(s.old.clone())];
                args.extend(s.key.iter().map(sql_key));
                done += c.prepare_cached(&sql)?.execute(params_from_iter(args))?;
            }
            Ok(done)
        })
        .await
    }
}
