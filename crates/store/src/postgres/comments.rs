//! Task comments on PostgreSQL.

use super::{PgStore, execute, query, query_opt};
use crate::{Comment, MAX_COMMENTS_PER_TASK, Result, StoreError};

impl PgStore {
    pub async fn add_comment(&self, comment: Comment) -> Result<()> {
        let task_id = &comment.task_id;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The task's row lock serializes comments on one task, so the count holds.
        let row = query_opt(
            &tx,
            "SELECT (SELECT count(*) FROM task_comments WHERE task_id = $1) \
             FROM tasks WHERE id = $1 FOR UPDATE",
            &[&task_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("task {task_id}"),
        })?;
        if row.try_get::<_, i64>(0)? >= MAX_COMMENTS_PER_TASK {
            return Err(StoreError::Conflict(format!(
                "the task has {MAX_COMMENTS_PER_TASK} comments, the most one task keeps"
            )));
        }
        execute(
            &tx,
            "INSERT INTO task_comments (id, task_id, author, content, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &comment.id,
                &comment.task_id,
                &comment.author,
                &comment.content,
                &comment.created_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn comments(&self, task_id: &str) -> Result<Vec<Comment>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT id, task_id, author, content, created_at FROM task_comments \
             WHERE task_id = $1 ORDER BY id",
            &[&task_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Comment {
                id: r.try_get(0)?,
                task_id: r.try_get(1)?,
                author: r.try_get(2)?,
                content: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        })
        .collect()
    }
}
