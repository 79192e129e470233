//! API token storage, on SQLite and on PostgreSQL.

use crate::testing::TestDb;
use crate::*;

crate::on_both_stores!(tokens_are_found_by_hash_listed_touched_and_revoked);

fn token(id: &str, hash: &str) -> NewToken {
    NewToken {
        id: id.into(),
        hash: hash.into(),
        description: format!("token {id}"),
        scopes: vec!["tasks:read:*".into(), "hooks:trigger:g/h".into()],
        user: Some("ada".into()),
        created_by: "admin".into(),
        created_at: 1_000,
        expires_at: Some(5_000),
    }
}

async fn tokens_are_found_by_hash_listed_touched_and_revoked(db: TestDb) {
    let s = &db.open().await;
    s.create_token(token("t1", "aa")).await.unwrap();
    s.create_token(NewToken {
        user: None,
        expires_at: None,
        created_at: 2_000,
        ..token("t2", "bb")
    })
    .await
    .unwrap();
    // The hash is unique: a second token with the same hash is refused and nothing changes.
    assert!(s.create_token(token("t3", "aa")).await.is_err());

    let t1 = s.token_by_hash("aa").await.unwrap().unwrap();
    assert_eq!(t1.id, "t1");
    assert_eq!(t1.scopes, vec!["tasks:read:*", "hooks:trigger:g/h"]);
    assert_eq!(t1.user.as_deref(), Some("ada"));
    assert_eq!(t1.expires_at, Some(5_000));
    assert!(t1.is_valid_at(4_999));
    assert!(!t1.is_valid_at(5_000));
    assert!(s.token_by_hash("cc").await.unwrap().is_none());

    let all = s.list_tokens().await.unwrap();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert_eq!(all[1].user, None);
    assert!(all[1].is_valid_at(i64::MAX));

    s.touch_token("t1", 3_000).await.unwrap();
    // An older use never moves last_used_at back.
    s.touch_token("t1", 2_500).await.unwrap();
    assert_eq!(
        s.token_by_hash("aa").await.unwrap().unwrap().last_used_at,
        Some(3_000)
    );

    assert!(s.revoke_token("t2", 4_000).await.unwrap());
    assert!(s.revoke_token("t2", 9_000).await.unwrap());
    assert!(!s.revoke_token("nope", 4_000).await.unwrap());
    let t2 = s.token_by_hash("bb").await.unwrap().unwrap();
    assert_eq!(t2.revoked_at, Some(4_000));
    assert!(!t2.is_valid_at(0));
}
