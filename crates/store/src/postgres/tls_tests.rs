//! The store over TLS, against a cluster of the test's own that refuses plain TCP.

use crate::postgres::PgStore;
use crate::testing::tls_cluster::TlsCluster;

/// `(application_name, ssl)` of every connection the store holds, read over the cluster's
/// Unix socket (which needs no TLS).
async fn store_connections(cluster: &TlsCluster) -> Vec<(String, bool)> {
    let config = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.socket_dir().display(),
        cluster.port
    );
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query(
            "SELECT a.application_name::text, s.ssl FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'taskhook%' \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn refused(url: &str) -> String {
    match PgStore::connect(url, None, 1).await {
        Ok(_) => panic!("{url} connected"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_encrypted_and_checked_as_sslmode_says() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let ca = cluster.ca_file.display().to_string();
    let other = cluster.other_ca_file.display().to_string();

    // verify-full by the name in the certificate: the pool's connections and the listener's
    // are all encrypted.
    let store = PgStore::connect(
        &cluster.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        None,
        2,
    )
    .await
    .expect("verify-full by name connects");
    let conns = store_connections(&cluster).await;
    assert!(
        conns.iter().any(|(n, _)| n == "taskhook-listener") && conns.len() >= 2,
        "{conns:?}"
    );
    assert!(conns.iter().all(|(_, ssl)| *ssl), "{conns:?}");
    store.close();
    drop(store);

    // The default (prefer) encrypts when the server offers TLS; require without a root
    // encrypts without checking; verify-ca checks the chain but not the name.
    for query in [
        String::new(),
        "sslmode=prefer".to_string(),
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=require&sslrootcert={ca}"),
    ] {
        let url = cluster.url("127.0.0.1", &query);
        let store = PgStore::connect(&url, None, 1)
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        store.close();
    }

    // Plain TCP is refused by the server; a certificate for another name, or from another
    // authority, is refused by taskhook.
    let e = refused(&cluster.url("127.0.0.1", "sslmode=disable")).await;
    assert!(e.contains("no encryption"), "{e}");
    let e = refused(&cluster.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(e.to_lowercase().contains("not valid for name"), "{e}");
    let e = refused(&cluster.url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    let e =
        refused(&cluster.url("localhost", &format!("sslmode=require&sslrootcert={other}"))).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
}
