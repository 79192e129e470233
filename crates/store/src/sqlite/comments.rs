//! Task comments on SQLite.

use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use crate::{Comment, MAX_COMMENTS_PER_TASK, Result, StoreError};

fn comment_from_row(r: &Row<'_>) -> rusqlite::Result<Comment> {
    Ok(Comment {
        id: r.get(0)?,
        task_id: r.get(1)?,
        author: r.get(2)?,
        content: r.get(3)?,
        created_at: r.get(4)?,
    })
}

impl SqliteStore {
    pub async fn add_comment(&self, comment: Comment) -> Result<()> {
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
                .query_row([&comment.task_id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound {
                    what: format!("task {}", comment.task_id),
                });
            }
            let count: i64 = c
                .prepare_cached("SELECT count(*) FROM task_comments WHERE task_id = ?1")?
                .query_row([&comment.task_id], |r| r.get(0))?;
            if count >= MAX_COMMENTS_PER_TASK {
                return Err(StoreError::Conflict(format!(
                    "the task has {MAX_COMMENTS_PER_TASK} comments, the most one task keeps"
                )));
            }
            c.prepare_cached(
                "INSERT INTO task_comments (id, task_id, author, content, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                comment.id,
                comment.task_id,
                comment.author,
                comment.content,
                comment.created_at
            ])?;
            Ok(())
        })
        .await
    }

    pub async fn comments(&self, task_id: &str) -> Result<Vec<Comment>> {
        let task_id = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, task_id, author, content, created_at FROM task_comments \
                 WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = stmt
                .query_map([task_id], comment_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}
