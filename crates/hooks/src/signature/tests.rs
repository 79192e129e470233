use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

const GITHUB_PUSH: &str = r#"{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","repository":{"id":186853002,"name":"taskhook","full_name":"acme/taskhook","private":false},"pusher":{"name":"octocat","email":"octocat@github.com"},"commits":[{"id":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","message":"Fix the scheduler \u2014 caf\u00e9","timestamp":"2026-01-01T00:00:00Z"}]}"#;

const GITLAB_PUSH: &str = r#"{"object_kind":"push","event_name":"push","before":"95790bf891e76fee5e1747ab589903a6a1f80f22","after":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","ref":"refs/heads/master","user_name":"John Smith","project_id":15,"project":{"name":"Diaspora","path_with_namespace":"mike/diaspora"},"total_commits_count":1}"#;

fn hmac_hex<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(raw_mac::<M>(key, parts))
}

fn raw_mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(secret: &str, body: &[u8]) -> String {
    hmac_hex::<Hmac<Sha256>>(secret.as_bytes(), &[body])
}

fn lookup(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    move |name: &str| {
        owned
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

fn github() -> WebhookSettings {
    WebhookSettings::Github {
        secret: "It's a Secret to Everybody".to_owned(),
    }
}

#[test]
fn github_reference_vector() {
    // The example from GitHub's "Validating webhook deliveries" documentation.
    let settings = github();
    let headers = lookup(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
    )]);
    assert_eq!(
        verify(&settings, &headers, b"Hello, World!", NOW),
        Ok(Delivery::default())
    );
}

#[test]
fn github_push_is_accepted_with_event_and_delivery() {
    let settings = github();
    let body = GITHUB_PUSH.as_bytes();
    let headers = lookup(&[
        (
            "x-hub-signature-256",
            format!("sha256={}", sha256_hex(settings.secret(), body)),
        ),
        ("x-github-event", "push".to_owned()),
        (
            "X-GITHUB-DELIVERY",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ]);
    let delivery = verify(&settings, &headers, body, NOW).unwrap();
    assert_eq!(delivery.event.as_deref(), Some("push"));
    assert_eq!(
        delivery.delivery_id.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
}

#[test]
fn github_refusals() {
    let settings = github();
    let body = GITHUB_PUSH.as_bytes();
    let good = sha256_hex(settings.secret(), body);

    let wrong_secret = lookup(&[(
        "X-Hub-Signature-256",
        format!("sha256={}", sha256_hex("not the secret", body)),
    )]);
    assert_eq!(
        verify(&settings, &wrong_secret, body, NOW),
        Err(SignatureError::Mismatch)
    );

    let headers = lookup(&[("X-Hub-Signature-256", format!("sha256={good}"))]);
    let tampered = GITHUB_PUSH.replace("octocat", "mallory");
    assert_eq!(
        verify(&settings, &headers, tampered.as_bytes(), NOW),
        Err(SignatureError::Mismatch)
    );

    assert_eq!(
        verify(&settings, &lookup(&[]), body, NOW),
        Err(SignatureError::MissingHeader(
            "X-Hub-Signature-256".to_owned()
        ))
    );
    // The legacy SHA-1 header alone does not do.
    let sha1_only = lookup(&[(
        "X-Hub-Signature",
        format!(
            "sha1={}",
            hmac_hex::<Hmac<Sha1>>(settings.secret().as_bytes(), &[body])
        ),
    )]);
    assert_eq!(
        verify(&settings, &sha1_only, body, NOW),
        Err(SignatureError::MissingHeader(
            "X-Hub-Signature-256".to_owned()
        ))
    );

    for value in [
        good.clone(),
        format!("sha1={good}"),
        format!("sha256:{good}"),
    ] {
        let headers = lookup(&[("X-Hub-Signature-256", value)]);
        assert!(
            matches!(
                verify(&settings, &headers, body, NOW),
                Err(SignatureError::Malformed(m)) if m.contains("X-Hub-Signature-256") && m.contains("sha256=")
            ),
            "a missing or wrong prefix is malformed"
        );
    }
    let not_hex = lookup(&[("X-Hub-Signature-256", "sha256=zz".to_owned())]);
    assert!(matches!(
        verify(&settings, &not_hex, body, NOW),
        Err(SignatureError::Malformed(_))
    ));
    let truncated = lookup(&[("X-Hub-Signature-256", format!("sha256={}", &good[..40]))]);
    assert_eq!(
        verify(&settings, &truncated, body, NOW),
        Err(SignatureError::Mismatch)
    );
    // Upper-case hex and surrounding spaces are fine.
    let upper = lookup(&[(
        "X-Hub-Signature-256",
        format!("  sha256={}  ", good.to_uppercase()),
    )]);
    assert!(verify(&settings, &upper, body, NOW).is_ok());
}

#[test]
fn gitlab_token() {
    let settings = WebhookSettings::Gitlab {
        secret: "glpat-webhook-token".to_owned(),
    };
    let body = GITLAB_PUSH.as_bytes();
    let headers = lookup(&[
        ("X-Gitlab-Token", "glpat-webhook-token".to_owned()),
        ("X-Gitlab-Event", "Push Hook".to_owned()),
        (
            "X-Gitlab-Event-UUID",
            "13792a34-cac6-4fda-95a8-c58e00a3954e".to_owned(),
        ),
        (
            "Idempotency-Key",
            "f5e5f430-f57b-4e6e-9fac-d9128cd7232f".to_owned(),
        ),
    ]);
    let delivery = verify(&settings, &headers, body, NOW).unwrap();
    assert_eq!(delivery.event.as_deref(), Some("Push Hook"));
    assert_eq!(
        delivery.delivery_id.as_deref(),
        Some("f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        "the idempotency key names the delivery"
    );

    // A resend of the same delivery: GitLab keeps the key and sends a new event UUID. Both
    // copies must carry one delivery id, or the resend would create a second task.
    let resend = lookup(&[
        ("X-Gitlab-Token", "glpat-webhook-token".to_owned()),
        ("X-Gitlab-Event", "Push Hook".to_owned()),
        (
            "X-Gitlab-Event-UUID",
            "5b0d7f3e-2f6b-4b8e-b1a1-0c9b1b0e1d22".to_owned(),
        ),
        (
            "Idempotency-Key",
            "f5e5f430-f57b-4e6e-9fac-d9128cd7232f".to_owned(),
        ),
    ]);
    assert_eq!(
        verify(&settings, &resend, body, NOW).unwrap().delivery_id,
        delivery.delivery_id
    );

    // A GitLab sending no idempotency key: the event UUID is the delivery id.
    let headers = lookup(&[
        ("x-gitlab-token", "glpat-webhook-token".to_owned()),
        (
            "x-gitlab-event-uuid",
            "13792a34-cac6-4fda-95a8-c58e00a3954e".to_owned(),
        ),
    ]);
    assert_eq!(
        verify(&settings, &headers, body, NOW)
            .unwrap()
            .delivery_id
            .as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );

    for token in ["glpat-webhook-toke", "glpat-webhook-tokeN", "x"] {
        let headers = lookup(&[("X-Gitlab-Token", token.to_owned())]);
        assert_eq!(
            verify(&settings, &headers, body, NOW),
            Err(SignatureError::Mismatch)
        );
    }
    assert_eq!(
        verify(&settings, &lookup(&[]), body, NOW),
        Err(SignatureError::MissingHeader("X-Gitlab-Token".to_owned()))
    );
    let empty = lookup(&[("X-Gitlab-Token", "  ".to_owned())]);
    assert_eq!(
        verify(&settings, &empty, body, NOW),
        Err(SignatureError::MissingHeader("X-Gitlab-Token".to_owned()))
    );
}

#[test]
fn bitbucket_signature() {
    let settings = WebhookSettings::Bitbucket {
        secret: "bb-secret".to_owned(),
    };
    let body = br#"{"push":{"changes":[{"new":{"type":"branch","name":"main"}}]},"repository":{"full_name":"acme/taskhook"}}"#;
    let signature = format!("sha256={}", sha256_hex("bb-secret", body));
    let headers = lookup(&[
        ("x-hub-signature", signature.clone()),
        ("X-Event-Key", "repo:push".to_owned()),
        (
            "X-Request-UUID",
            "a7b2f3e4-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_owned(),
        ),
    ]);
    assert_eq!(
        verify(&settings, &headers, body, NOW),
        Ok(Delivery {
            event: Some("repo:push".to_owned()),
            delivery_id: Some("a7b2f3e4-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_owned()),
        })
    );
    assert_eq!(
        verify(&settings, &headers, &body[1..], NOW),
        Err(SignatureError::Mismatch)
    );
    let other = WebhookSettings::Bitbucket {
        secret: "bb-secreT".to_owned(),
    };
    assert_eq!(
        verify(&other, &headers, body, NOW),
        Err(SignatureError::Mismatch)
    );
    let sha1 = lookup(&[(
        "X-Hub-Signature",
        format!("sha1={}", hmac_hex::<Hmac<Sha1>>(b"bb-secret", &[body])),
    )]);
    assert!(matches!(
        verify(&settings, &sha1, body, NOW),
        Err(SignatureError::Malformed(_))
    ));
    // GitHub's header is not Bitbucket's.
    let github_header = lookup(&[("X-Hub-Signature-256", signature)]);
    assert_eq!(
        verify(&settings, &github_header, body, NOW),
        Err(SignatureError::MissingHeader("X-Hub-Signature".to_owned()))
    );
}

#[test]
fn gitea_signature_has_no_prefix() {
    let settings = WebhookSettings::Gitea {
        secret: "gitea-secret".to_owned(),
    };
    let body = br#"{"ref":"refs/heads/develop","before":"28e1879d029cb852e4844d9c718537df08844e03","after":"bffeb74224043ba2feb48d137756c8a9331c449a","repository":{"full_name":"gitea/webhooks"}}"#;
    let headers = lookup(&[
        ("X-Gitea-Signature", sha256_hex("gitea-secret", body)),
        ("X-Gitea-Event", "push".to_owned()),
        (
            "X-Gitea-Delivery",
            "f6266f16-1bf3-46a5-9ea4-602e06ead473".to_owned(),
        ),
    ]);
    let delivery = verify(&settings, &headers, body, NOW).unwrap();
    assert_eq!(delivery.event.as_deref(), Some("push"));
    assert_eq!(
        delivery.delivery_id.as_deref(),
        Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );

    let prefixed = lookup(&[(
        "X-Gitea-Signature",
        format!("sha256={}", sha256_hex("gitea-secret", body)),
    )]);
    assert!(matches!(
        verify(&settings, &prefixed, body, NOW),
        Err(SignatureError::Malformed(_))
    ));
    let mut tampered = body.to_vec();
    tampered.push(b'\n');
    assert_eq!(
        verify(&settings, &headers, &tampered, NOW),
        Err(SignatureError::Mismatch)
    );
}

/// The secret and key from the Standard Webhooks reference test suite.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn standard_headers(
    id: &str,
    timestamp: i64,
    body: &[u8],
    key: &[u8],
) -> Vec<(&'static str, String)> {
    let signed = raw_mac::<Hmac<Sha256>>(key, &[format!("{id}.{timestamp}.").as_bytes(), body]);
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            format!("v1,{}", STANDARD.encode(signed)),
        ),
    ]
}

#[test]
fn standard_webhooks_reference_vector() {
    // From the Standard Webhooks reference libraries' tests.
    let settings = WebhookSettings::Standard {
        secret: WHSEC.to_owned(),
    };
    let body = br#"{"test": 2432232314}"#;
    let headers = lookup(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
        ("webhook-timestamp", "1614265330".to_owned()),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned(),
        ),
    ]);
    assert_eq!(
        verify(&settings, &headers, body, 1_614_265_330),
        Ok(Delivery {
            event: None,
            delivery_id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
        })
    );
    // The same delivery a day later is a replay.
    assert!(matches!(
        verify(&settings, &headers, body, 1_614_265_330 + 86_400),
        Err(SignatureError::TimestampOutOfTolerance { .. })
    ));
}

#[test]
fn standard_webhooks() {
    let key = STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    let settings = WebhookSettings::Standard {
        secret: WHSEC.to_owned(),
    };
    let body = br#"{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00Z","data":{"id":"in_123","amount":4200}}"#;
    let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";

    let pairs = standard_headers(id, NOW - 10, body, &key);
    assert_eq!(
        verify(&settings, &lookup(&pairs), body, NOW).unwrap(),
        Delivery {
            event: None,
            delivery_id: Some(id.to_owned()),
        }
    );

    // Several signatures (key rotation), other versions ignored, any v1 may match.
    let mut rotated = pairs.clone();
    rotated[2].1 = format!(
        "v1a,c29tZXRoaW5nIGVsc2U= v1,{} {}",
        STANDARD.encode([0u8; 32]),
        pairs[2].1
    );
    assert!(verify(&settings, &lookup(&rotated), body, NOW).is_ok());
    // The valid signature first, then one made with the retired key: still valid (a later
    // candidate that fails must not undo an earlier match).
    let mut valid_first = pairs.clone();
    valid_first[2].1 = format!("{} v1,{}", pairs[2].1, STANDARD.encode([7u8; 32]));
    assert!(verify(&settings, &lookup(&valid_first), body, NOW).is_ok());
    // Only wrong candidates: a mismatch, not a malformed header.
    let mut all_wrong = pairs.clone();
    all_wrong[2].1 = format!(
        "v1,{} v1,{}",
        STANDARD.encode([7u8; 32]),
        STANDARD.encode([8u8; 32])
    );
    assert_eq!(
        verify(&settings, &lookup(&all_wrong), body, NOW),
        Err(SignatureError::Mismatch)
    );

    // The secret without its prefix works too.
    let bare = WebhookSettings::Standard {
        secret: WHSEC.trim_start_matches("whsec_").to_owned(),
    };
    assert!(verify(&bare, &lookup(&pairs), body, NOW).is_ok());

    // Tampered body, id or timestamp.
    assert_eq!(
        verify(&settings, &lookup(&pairs), b"{}", NOW),
        Err(SignatureError::Mismatch)
    );
    let mut other_id = pairs.clone();
    other_id[0].1 = "msg_other".to_owned();
    assert_eq!(
        verify(&settings, &lookup(&other_id), body, NOW),
        Err(SignatureError::Mismatch)
    );
    let mut other_time = pairs.clone();
    other_time[1].1 = (NOW - 11).to_string();
    assert_eq!(
        verify(&settings, &lookup(&other_time), body, NOW),
        Err(SignatureError::Mismatch)
    );

    // Wrong secret.
    let wrong = WebhookSettings::Standard {
        secret: format!("whsec_{}", STANDARD.encode(b"another key of decent length")),
    };
    assert_eq!(
        verify(&wrong, &lookup(&pairs), body, NOW),
        Err(SignatureError::Mismatch)
    );

    // Timestamps: 5 minutes either way is fine, a second more is not.
    for (sent, ok) in [
        (NOW - 300, true),
        (NOW + 300, true),
        (NOW - 301, false),
        (NOW + 301, false),
    ] {
        let result = verify(
            &settings,
            &lookup(&standard_headers(id, sent, body, &key)),
            body,
            NOW,
        );
        if ok {
            assert!(result.is_ok(), "{sent}");
        } else {
            assert_eq!(
                result,
                Err(SignatureError::TimestampOutOfTolerance {
                    timestamp: sent,
                    now: NOW,
                    tolerance_seconds: 300
                })
            );
        }
    }

    // Missing and malformed headers.
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let partial: Vec<_> = pairs
            .iter()
            .filter(|(k, _)| *k != missing)
            .cloned()
            .collect();
        assert_eq!(
            verify(&settings, &lookup(&partial), body, NOW),
            Err(SignatureError::MissingHeader(missing.to_owned()))
        );
    }
    let mut bad_time = pairs.clone();
    bad_time[1].1 = "2026-01-01T00:00:00Z".to_owned();
    assert!(matches!(
        verify(&settings, &lookup(&bad_time), body, NOW),
        Err(SignatureError::Malformed(m)) if m.contains("webhook-timestamp")
    ));
    let mut no_v1 = pairs.clone();
    no_v1[2].1 = pairs[2].1.replacen("v1,", "v2,", 1);
    assert!(matches!(
        verify(&settings, &lookup(&no_v1), body, NOW),
        Err(SignatureError::Malformed(m)) if m.contains("webhook-signature")
    ));
    let mut garbage = pairs.clone();
    garbage[2].1 = "v1,!!!not-base64!!!".to_owned();
    assert_eq!(
        verify(&settings, &lookup(&garbage), body, NOW),
        Err(SignatureError::Mismatch)
    );

    // A secret that is not base64 is a settings problem, not the sender's.
    let broken = WebhookSettings::Standard {
        secret: "whsec_not base64!".to_owned(),
    };
    assert!(matches!(
        verify(&broken, &lookup(&pairs), body, NOW),
        Err(SignatureError::InvalidSettings(SettingsError { field, .. })) if field == "secret"
    ));
}

#[test]
fn hmac_defaults_sign_the_body_in_hex() {
    let settings = WebhookSettings::Hmac(HmacSettings::new("s3cr3t"));
    let body = br#"{"event":"order.created","id":42}"#;
    let headers = lookup(&[("x-signature", sha256_hex("s3cr3t", body))]);
    assert_eq!(
        verify(&settings, &headers, body, NOW),
        Ok(Delivery::default())
    );
    assert_eq!(
        verify(&settings, &lookup(&[]), body, NOW),
        Err(SignatureError::MissingHeader("X-Signature".to_owned()))
    );
    let wrong_length = lookup(&[("X-Signature", "abcd".to_owned())]);
    assert!(matches!(
        verify(&settings, &wrong_length, body, NOW),
        Err(SignatureError::Malformed(_))
    ));
}

#[test]
fn hmac_algorithms_encodings_and_prefixes() {
    let body = b"payload \x00\xff bytes";
    let key = b"key";
    let cases: Vec<(HmacAlgorithm, Vec<u8>)> = vec![
        (HmacAlgorithm::Sha1, raw_mac::<Hmac<Sha1>>(key, &[body])),
        (HmacAlgorithm::Sha256, raw_mac::<Hmac<Sha256>>(key, &[body])),
        (HmacAlgorithm::Sha512, raw_mac::<Hmac<Sha512>>(key, &[body])),
    ];
    for (algorithm, mac) in cases {
        for encoding in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
            let encoded = match encoding {
                SignatureEncoding::Hex => hex::encode(&mac),
                SignatureEncoding::Base64 => STANDARD.encode(&mac),
            };
            let settings = WebhookSettings::Hmac(HmacSettings {
                header: "X-Shop-Hmac".to_owned(),
                algorithm,
                encoding,
                prefix: Some("v0=".to_owned()),
                event_header: Some("x-shop-topic".to_owned()),
                delivery_header: Some("X-Shop-Webhook-Id".to_owned()),
                ..HmacSettings::new("key")
            });
            validate_settings(&settings).unwrap();
            let headers = lookup(&[
                ("x-shop-hmac", format!("V0={encoded}")),
                ("X-SHOP-TOPIC", "orders/create".to_owned()),
                ("x-shop-webhook-id", "b54557e4".to_owned()),
            ]);
            assert_eq!(
                verify(&settings, &headers, body, NOW),
                Ok(Delivery {
                    event: Some("orders/create".to_owned()),
                    delivery_id: Some("b54557e4".to_owned()),
                }),
                "{algorithm:?} {encoding:?}"
            );
            let no_prefix = lookup(&[("X-Shop-Hmac", encoded.clone())]);
            assert!(
                matches!(
                    verify(&settings, &no_prefix, body, NOW),
                    Err(SignatureError::Malformed(m)) if m.contains("v0=")
                ),
                "{algorithm:?} {encoding:?}"
            );
            assert_eq!(
                verify(&settings, &headers, b"payload", NOW),
                Err(SignatureError::Mismatch)
            );
        }
    }
}

#[test]
fn hmac_with_timestamp_signs_timestamp_dot_body() {
    let settings = WebhookSettings::Hmac(HmacSettings {
        timestamp_header: Some("X-Timestamp".to_owned()),
        prefix: Some("sha256=".to_owned()),
        tolerance_seconds: 60,
        ..HmacSettings::new("whk")
    });
    let body = br#"{"ok":true}"#;
    let sent = NOW - 30;
    let over_both = hmac_hex::<Hmac<Sha256>>(b"whk", &[format!("{sent}.").as_bytes(), body]);
    let headers = lookup(&[
        ("X-Signature", format!("sha256={over_both}")),
        ("x-timestamp", sent.to_string()),
    ]);
    assert!(verify(&settings, &headers, body, NOW).is_ok());

    // Signing the body alone is not enough.
    let body_only = lookup(&[
        ("X-Signature", format!("sha256={}", sha256_hex("whk", body))),
        ("X-Timestamp", sent.to_string()),
    ]);
    assert_eq!(
        verify(&settings, &body_only, body, NOW),
        Err(SignatureError::Mismatch)
    );
    // A changed timestamp breaks the signature; a stale one is refused.
    let shifted = lookup(&[
        ("X-Signature", format!("sha256={over_both}")),
        ("X-Timestamp", (sent + 1).to_string()),
    ]);
    assert_eq!(
        verify(&settings, &shifted, body, NOW),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(&settings, &headers, body, sent + 61),
        Err(SignatureError::TimestampOutOfTolerance {
            timestamp: sent,
            now: sent + 61,
            tolerance_seconds: 60
        })
    );
    let missing = lookup(&[("X-Signature", format!("sha256={over_both}"))]);
    assert_eq!(
        verify(&settings, &missing, body, NOW),
        Err(SignatureError::MissingHeader("X-Timestamp".to_owned()))
    );

    // With `signed_payload: body`, the timestamp is only checked for freshness.
    let body_mode = WebhookSettings::Hmac(HmacSettings {
        timestamp_header: Some("X-Timestamp".to_owned()),
        signed_payload: Some(SignedPayload::Body),
        ..HmacSettings::new("whk")
    });
    assert!(
        verify(
            &body_mode,
            &lookup(&[
                ("X-Signature", sha256_hex("whk", body)),
                ("X-Timestamp", sent.to_string()),
            ]),
            body,
            NOW
        )
        .is_ok()
    );
    assert!(matches!(
        verify(
            &body_mode,
            &lookup(&[
                ("X-Signature", sha256_hex("whk", body)),
                ("X-Timestamp", (NOW - 301).to_string()),
            ]),
            body,
            NOW
        ),
        Err(SignatureError::TimestampOutOfTolerance { .. })
    ));
}

#[test]
fn header_lookup_is_case_insensitive() {
    let pairs = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("X-GitHub-Event".to_owned(), "ping".to_owned()),
    ];
    let headers = header_lookup(&pairs);
    assert_eq!(headers("X-GITHUB-EVENT").as_deref(), Some("ping"));
    assert_eq!(headers("x-github-event").as_deref(), Some("ping"));
    assert_eq!(headers("Content-Type").as_deref(), Some("application/json"));
    assert_eq!(headers("X-GitHub-Delivery"), None);

    let settings = github();
    let body = b"{\"zen\":\"Design for failure.\"}";
    let pairs = [
        (
            "X-HUB-SIGNATURE-256",
            format!("sha256={}", sha256_hex(settings.secret(), body)),
        ),
        ("x-github-event", "ping".to_owned()),
    ];
    let delivery = verify(&settings, &header_lookup(&pairs), body, NOW).unwrap();
    assert_eq!(delivery.event.as_deref(), Some("ping"));
}

#[test]
fn serde_form() {
    let json = serde_json::json!({"provider": "github", "secret": "abc"});
    let parsed: WebhookSettings = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(
        parsed,
        WebhookSettings::Github {
            secret: "abc".to_owned()
        }
    );
    assert_eq!(serde_json::to_value(&parsed).unwrap(), json);

    let parsed: WebhookSettings = serde_json::from_value(serde_json::json!({
        "provider": "hmac",
        "secret": "abc",
        "timestamp_header": "X-Ts",
    }))
    .unwrap();
    let WebhookSettings::Hmac(hmac) = &parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(hmac.header, "X-Signature");
    assert_eq!(hmac.algorithm, HmacAlgorithm::Sha256);
    assert_eq!(hmac.encoding, SignatureEncoding::Hex);
    assert_eq!(hmac.tolerance_seconds, 300);
    assert_eq!(hmac.signed_payload, None);
    assert_eq!(
        hmac.effective_signed_payload(),
        SignedPayload::TimestampBody
    );
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back["provider"], "hmac");
    assert_eq!(back["algorithm"], "sha256");
    assert_eq!(
        serde_json::from_value::<WebhookSettings>(back).unwrap(),
        parsed
    );

    let full: WebhookSettings = serde_json::from_value(serde_json::json!({
        "provider": "hmac", "secret": "abc", "header": "X-Sig", "algorithm": "sha512",
        "encoding": "base64", "prefix": "sha512=", "timestamp_header": "X-Ts",
        "tolerance_seconds": 60, "signed_payload": "body",
        "event_header": "X-Event", "delivery_header": "X-Id"
    }))
    .unwrap();
    validate_settings(&full).unwrap();

    for bad in [
        serde_json::json!({"provider": "github", "secret": "abc", "extra": 1}),
        serde_json::json!({"provider": "hmac", "secret": "abc", "extra": 1}),
        serde_json::json!({"provider": "hmac", "secret": "abc", "algorithm": "md5"}),
        serde_json::json!({"provider": "hmac", "secret": "abc", "signed_payload": "body.timestamp"}),
        serde_json::json!({"provider": "svn", "secret": "abc"}),
        serde_json::json!({"provider": "gitlab"}),
        serde_json::json!({"secret": "abc"}),
    ] {
        assert!(
            serde_json::from_value::<WebhookSettings>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn redaction() {
    let all = [
        github(),
        WebhookSettings::Gitlab {
            secret: "t".to_owned(),
        },
        WebhookSettings::Bitbucket {
            secret: "t".to_owned(),
        },
        WebhookSettings::Gitea {
            secret: "t".to_owned(),
        },
        WebhookSettings::Standard {
            secret: WHSEC.to_owned(),
        },
        WebhookSettings::Hmac(HmacSettings::new("t")),
    ];
    for settings in all {
        let redacted = settings.redacted();
        assert_eq!(redacted.secret(), REDACTED_SECRET);
        assert_eq!(redacted.provider(), settings.provider());
        assert!(redacted.is_redacted());
        let json = serde_json::to_string(&redacted).unwrap();
        assert!(
            !json.contains(&format!("\"{}\"", settings.secret())),
            "{json}"
        );
        // Sending the redacted form back must not store the placeholder.
        assert_eq!(validate_settings(&redacted).unwrap_err().field, "secret");
        assert_eq!(redacted.with_secret_from(&settings), settings);
    }
    // A real new secret, or another provider, is kept as it is.
    let new = WebhookSettings::Gitea {
        secret: "new".to_owned(),
    };
    assert_eq!(
        new.with_secret_from(&WebhookSettings::Gitea {
            secret: "old".to_owned()
        }),
        new
    );
    let switched = WebhookSettings::Gitlab {
        secret: REDACTED_SECRET.to_owned(),
    };
    assert_eq!(switched.with_secret_from(&github()), switched);
}

#[test]
fn settings_validation() {
    let field = |settings: WebhookSettings| validate_settings(&settings).map_err(|e| e.field);
    assert_eq!(field(github()), Ok(()));
    assert_eq!(
        field(WebhookSettings::Github {
            secret: String::new()
        }),
        Err("secret".to_owned())
    );
    assert_eq!(
        field(WebhookSettings::Gitlab {
            secret: "  ".to_owned()
        }),
        Err("secret".to_owned())
    );
    assert_eq!(
        field(WebhookSettings::Standard {
            secret: WHSEC.to_owned()
        }),
        Ok(())
    );
    for secret in ["whsec_", "whsec_***", "whsec_ YWJj"] {
        assert_eq!(
            field(WebhookSettings::Standard {
                secret: secret.to_owned()
            }),
            Err("secret".to_owned()),
            "{secret}"
        );
    }
    let hmac = |f: fn(&mut HmacSettings)| {
        let mut settings = HmacSettings::new("k");
        f(&mut settings);
        field(WebhookSettings::Hmac(settings))
    };
    assert_eq!(hmac(|_| {}), Ok(()));
    assert_eq!(hmac(|s| s.header = String::new()), Err("header".to_owned()));
    assert_eq!(
        hmac(|s| s.header = "X Signature".to_owned()),
        Err("header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.header = "X-Signature:".to_owned()),
        Err("header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.header = "X-Sïgnature".to_owned()),
        Err("header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.timestamp_header = Some("bad header".to_owned())),
        Err("timestamp_header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.event_header = Some(String::new())),
        Err("event_header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.delivery_header = Some("a\nb".to_owned())),
        Err("delivery_header".to_owned())
    );
    assert_eq!(
        hmac(|s| s.prefix = Some(String::new())),
        Err("prefix".to_owned())
    );
    assert_eq!(
        hmac(|s| s.prefix = Some("sha 256=".to_owned())),
        Err("prefix".to_owned())
    );
    assert_eq!(
        hmac(|s| s.tolerance_seconds = 0),
        Err("tolerance_seconds".to_owned())
    );
    assert_eq!(
        hmac(|s| s.signed_payload = Some(SignedPayload::TimestampBody)),
        Err("signed_payload".to_owned())
    );
    let error = validate_settings(&WebhookSettings::Hmac(HmacSettings {
        header: "X Sig".to_owned(),
        ..HmacSettings::new("k")
    }))
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("`header` is not a valid header name"),
        "{error}"
    );

    // Non-ASCII names are refused, including letters whose low byte is a token character
    // (`Ł` is U+0141: its low byte is `A`).
    for name in ["X-Signatur-Ł", "X-Sig-š", "X-Sigé", "X-\u{200b}Sig"] {
        let error = validate_settings(&WebhookSettings::Hmac(HmacSettings {
            timestamp_header: Some(name.to_owned()),
            ..HmacSettings::new("k")
        }))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`timestamp_header` is not a valid header name"),
            "{name}: {error}"
        );
    }

    // Unvalidated settings with the same flaw are refused at verification.
    let incoherent = WebhookSettings::Hmac(HmacSettings {
        signed_payload: Some(SignedPayload::TimestampBody),
        ..HmacSettings::new("k")
    });
    assert!(matches!(
        verify(
            &incoherent,
            &lookup(&[("X-Signature", "00".repeat(32))]),
            b"",
            NOW
        ),
        Err(SignatureError::InvalidSettings(_))
    ));
}

fn any_settings() -> impl Strategy<Value = WebhookSettings> {
    let secret = "[ -~]{0,24}";
    prop_oneof![
        secret.prop_map(|secret| WebhookSettings::Github { secret }),
        secret.prop_map(|secret| WebhookSettings::Gitlab { secret }),
        secret.prop_map(|secret| WebhookSettings::Bitbucket { secret }),
        secret.prop_map(|secret| WebhookSettings::Gitea { secret }),
        prop_oneof![Just(WHSEC.to_owned()), secret.prop_map(String::from)]
            .prop_map(|secret| WebhookSettings::Standard { secret }),
        (
            secret,
            prop_oneof![
                Just(HmacAlgorithm::Sha1),
                Just(HmacAlgorithm::Sha256),
                Just(HmacAlgorithm::Sha512)
            ],
            prop_oneof![
                Just(SignatureEncoding::Hex),
                Just(SignatureEncoding::Base64)
            ],
            proptest::option::of("[ -~]{0,8}"),
            proptest::option::of(Just("X-Timestamp".to_owned())),
            proptest::option::of(prop_oneof![
                Just(SignedPayload::Body),
                Just(SignedPayload::TimestampBody)
            ]),
            0u64..1000,
        )
            .prop_map(
                |(
                    secret,
                    algorithm,
                    encoding,
                    prefix,
                    timestamp_header,
                    signed_payload,
                    tolerance_seconds,
                )| {
                    WebhookSettings::Hmac(HmacSettings {
                        algorithm,
                        encoding,
                        prefix,
                        timestamp_header,
                        signed_payload,
                        tolerance_seconds,
                        ..HmacSettings::new(secret)
                    })
                }
            ),
    ]
}

const HEADER_NAMES: [&str; 12] = [
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitlab-Token",
    "X-Gitea-Signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-Signature",
    "X-Timestamp",
    "X-GitHub-Event",
    "X-Event-Key",
    "Idempotency-Key",
];

proptest! {
    /// No input makes verification or validation panic, and arbitrary headers
    /// never pass for a real secret.
    #[test]
    fn never_panics(
        settings in any_settings(),
        values in proptest::collection::vec(proptest::option::of(prop_oneof![
            "\\PC{0,80}",
            "(sha256=|v1,|v0=)?[0-9a-fA-F+/=]{0,130}",
            "v1,[A-Za-z0-9+/]{43}= v1,[A-Za-z0-9+/]{43}=",
            "-?[0-9]{1,20}",
        ]), HEADER_NAMES.len()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        now in any::<i64>(),
    ) {
        let headers = |name: &str| {
            HEADER_NAMES
                .iter()
                .position(|known| known.eq_ignore_ascii_case(name))
                .and_then(|i| values[i].clone())
        };
        let _ = validate_settings(&settings);
        let _ = settings.redacted();
        let result = verify(&settings, &headers, &body, now);
        if !settings.secret().is_empty() && !matches!(settings, WebhookSettings::Gitlab { .. }) {
            prop_assert!(result.is_err(), "{settings:?} accepted {values:?}");
        }
    }

    /// A correct GitHub signature is accepted for any body and secret, and any
    /// single flipped bit of the body is refused.
    #[test]
    fn github_round_trip(secret in "[ -~]{1,40}", body in proptest::collection::vec(any::<u8>(), 1..512), flip in any::<proptest::sample::Index>()) {
        let settings = WebhookSettings::Github { secret: secret.clone() };
        let signature = format!("sha256={}", sha256_hex(&secret, &body));
        let headers = |name: &str| name.eq_ignore_ascii_case("x-hub-signature-256").then(|| signature.clone());
        prop_assert!(verify(&settings, &headers, &body, 0).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 1;
        prop_assert_eq!(verify(&settings, &headers, &tampered, 0), Err(SignatureError::Mismatch));
    }
}
