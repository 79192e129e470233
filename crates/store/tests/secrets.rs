//! Named secrets in the store, on SQLite and on PostgreSQL.

use taskhook_store::testing::TestDb;

taskhook_store::on_both_stores!(
    secrets_are_created_replaced_read_and_deleted,
    values_survive_reopening_and_are_read_by_name
);

async fn secrets_are_created_replaced_read_and_deleted(db: TestDb) {
    let store = db.open_with_pool(2).await;
    assert!(store.list_secrets().await.unwrap().is_empty());
    let (meta, created) = store.put_secret("b_key", "v1", "").await.unwrap();
    assert!(created);
    assert_eq!((meta.name.as_str(), meta.version), ("b_key", 1));
    assert_eq!(meta.created_at, meta.updated_at);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (meta2, created) = store.put_secret("b_key", "v2", "rotated").await.unwrap();
    assert!(!created);
    assert_eq!(meta2.version, 2);
    assert_eq!(meta2.description, "rotated");
    assert_eq!(meta2.created_at, meta.created_at);
    assert!(meta2.updated_at > meta.updated_at);
    store.put_secret("a_key", "other", "first").await.unwrap();
    let names: Vec<String> = store
        .list_secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["a_key", "b_key"]);
    assert_eq!(store.get_secret("b_key").await.unwrap(), Some(meta2));
    assert_eq!(store.get_secret("nope").await.unwrap(), None);
    assert!(store.delete_secret("b_key").await.unwrap());
    assert!(!store.delete_secret("b_key").await.unwrap());
    assert_eq!(store.get_secret("b_key").await.unwrap(), None);
    let (meta, created) = store.put_secret("b_key", "v3", "").await.unwrap();
    assert!(created);
    assert_eq!(meta.version, 1);
    store.close();
}

async fn values_survive_reopening_and_are_read_by_name(db: TestDb) {
    let odd = "pä\"ss\\word\n'; DROP TABLE secrets; --";
    {
        let store = db.open_with_pool(2).await;
        store.put_secret("odd", odd, "").await.unwrap();
        store.put_secret("plain", "value", "").await.unwrap();
        store
            .put_secret("unread", "never asked for", "")
            .await
            .unwrap();
        store.close();
    }
    let store = db.open_with_pool(2).await;
    let mut got = store
        .secret_values(vec!["plain".into(), "odd".into(), "missing".into()])
        .await
        .unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("odd".to_string(), odd.to_string()),
            ("plain".to_string(), "value".to_string())
        ]
    );
    assert!(store.secret_values(vec![]).await.unwrap().is_empty());
    store.close();
}
