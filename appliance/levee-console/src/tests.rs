//! Router tests: every permission rule and every security header, through `oneshot`,
//! against a real engine on a temporary data directory.

use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use levee_store::{Frequency, QuarantineEntry, Role, User};
use levee_types::{Address, QueueId};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use tower::ServiceExt;

struct Env {
    dir: PathBuf,
    state: AppState,
    app: Router,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env() -> Env {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "levee-console-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "# test appliance\nhostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n[[domain]]\nname = \"example.test\"\ndownstream = \"127.0.0.1:9\"\n",
        dir.join("data").display()
    );
    let path = dir.join("levee.toml");
    std::fs::write(&path, &text).unwrap();
    let config = levee_config::Config::parse(&text, "test").unwrap();
    let engine = Engine::open(config).unwrap();
    engine.set_config_path(path);
    let state = AppState::new(engine).unwrap();
    let app = router(state.clone());
    Env { dir, state, app }
}

const PASSWORD: &str = "a long enough password";

/// A cheap but valid argon2id hash (tests need many users; the real cost is not the point).
fn quick_hash(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(pw.as_bytes(), &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string()
}

fn add_user(e: &Env, name: &str, role: Role, addresses: &[&str]) {
    let u = User {
        name: name.into(),
        role,
        password_hash: quick_hash(PASSWORD),
        addresses: addresses.iter().map(|s| s.to_string()).collect(),
        digest: Frequency::Daily,
        digest_last_sent: 0,
        created_at: 1,
    };
    assert!(e.state.store().user_create(&u).unwrap());
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
}

async fn send(
    e: &Env,
    method: &str,
    path: &str,
    cookies: &str,
    body: &str,
    extra: &[(&str, &str)],
    ip: &str,
) -> Resp {
    let mut b = Request::builder().method(method).uri(path);
    if !cookies.is_empty() {
        b = b.header(header::COOKIE, cookies);
    }
    if method == "POST" && !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Body::from(body.to_string())).unwrap();
    req.extensions_mut().insert(Peer(SocketAddr::new(ip.parse().unwrap(), 40000)));
    let r = e.app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), 10 << 20).await.unwrap();
    Resp { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn get(e: &Env, path: &str, cookies: &str) -> Resp {
    send(e, "GET", path, cookies, "", &[], "192.0.2.1").await
}

/// A logged-in session: (cookie header, csrf token).
struct Login {
    cookie: String,
    csrf: String,
}

async fn try_login(e: &Env, user: &str, pw: &str, ip: &str) -> Resp {
    let form = get(e, "/login", "").await;
    let pre = form.set_cookie(PRE_COOKIE).expect("pre cookie");
    let token = pre.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    send(
        e,
        "POST",
        "/login",
        &format!("{PRE_COOKIE}={token}"),
        &format!("_csrf={token}&username={user}&password={}", pw.replace(' ', "+")),
        &[],
        ip,
    )
    .await
}

async fn login(e: &Env, user: &str) -> Login {
    let r = try_login(e, user, PASSWORD, "192.0.2.1").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    session_of(e, &r)
}

fn session_of(e: &Env, r: &Resp) -> Login {
    let c = r.set_cookie(SESSION_COOKIE).expect("session cookie");
    let id = c.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let s = e.state.store().session_get(&auth::digest(&id)).unwrap().unwrap();
    Login { cookie: format!("{SESSION_COOKIE}={id}"), csrf: s.csrf }
}

async fn post(e: &Env, l: &Login, path: &str, body: &str) -> Resp {
    let body = if body.is_empty() {
        format!("_csrf={}", l.csrf)
    } else {
        format!("_csrf={}&{body}", l.csrf)
    };
    send(e, "POST", path, &l.cookie, &body, &[], "192.0.2.1").await
}

/// Queues a real message through the engine and holds it in quarantine.
async fn quarantined(e: &Env, rcpt: &str, subject: &str, body: &str) -> QueueId {
    let data = format!(
        "From: \"Mallory <b>\" <mallory@evil.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/html\r\n\r\n{body}\r\n--XX\r\nContent-Type: application/x-msdownload\r\nContent-Disposition: attachment; filename=\"invoice<script>.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVpQ\r\n--XX--\r\n"
    );
    let id = e
        .state
        .engine()
        .send_mail(
            Some(Address::parse("mallory@evil.test", false).unwrap()),
            vec![Address::parse(rcpt, false).unwrap()],
            data.into_bytes(),
        )
        .await
        .unwrap();
    let store = e.state.store();
    let mut q = store.queue_get(&id).unwrap().unwrap();
    q.held = true;
    store.queue_put(&q).unwrap();
    store
        .quarantine_put(&QuarantineEntry {
            id: id.clone(),
            received_at: now(),
            expires_at: now() + 86_400,
            client_ip: "203.0.113.9".into(),
            mail_from: "mallory@evil.test".into(),
            rcpt_to: vec![rcpt.into()],
            from_header: "Mallory <b> <mallory@evil.test>".into(),
            subject: subject.into(),
            size: 100,
            score: 9.5,
            action: "quarantine".into(),
            findings: vec![("GTUBE".into(), "<script>x</script>".into(), 100.0)],
        })
        .unwrap();
    id
}

fn assert_security_headers(r: &Resp, what: &str) {
    let h = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(h("content-security-policy"), CSP, "{what}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert!(h("strict-transport-security").starts_with("max-age="), "{what}");
    assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
    assert!(
        CSP.contains("script-src 'self'")
            && !CSP.contains("unsafe-inline")
            && CSP.contains("frame-ancestors 'none'")
    );
}

#[tokio::test]
async fn first_run_sets_the_admin_and_config_once() {
    let e = env();
    assert_eq!(get(&e, "/", "").await.location(), "/setup");
    assert_eq!(get(&e, "/login", "").await.location(), "/setup");
    let form = get(&e, "/setup", "").await;
    assert_eq!(form.status, StatusCode::OK);
    assert_security_headers(&form, "setup");
    let pre = form.set_cookie(PRE_COOKIE).unwrap();
    assert!(
        pre.contains("Secure") && pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
        "{pre}"
    );
    let token = pre.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let code = e.state.setup_code().to_string();
    assert_eq!(code.len(), 12);
    let body = format!("_csrf={token}&code={code}&password=correct+horse+battery&password2=correct+horse+battery&hostname=gw.example.test&domain=shop.test&downstream=127.0.0.1%3A2626");
    // Without the setup code (a stranger on the LAN): refused, nothing created.
    let r = send(
        &e,
        "POST",
        "/setup",
        &format!("{PRE_COOKIE}={token}"),
        &body.replace(&code, "WRONGWRONG22"),
        &[],
        "192.0.2.1",
    )
    .await;
    assert!(r.body.contains("setup code is not right"), "{}", r.body);
    assert_eq!(e.state.store().users_len(), 0);
    // Without the double-submit cookie: refused, nothing created.
    let r = send(&e, "POST", "/setup", "", &body, &[], "192.0.2.1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(e.state.store().users_len(), 0);
    // Too short.
    let short = body.replace("correct+horse+battery", "short");
    let r = send(&e, "POST", "/setup", &format!("{PRE_COOKIE}={token}"), &short, &[], "192.0.2.1")
        .await;
    assert!(r.body.contains("too short"));
    let r =
        send(&e, "POST", "/setup", &format!("{PRE_COOKIE}={token}"), &body, &[], "192.0.2.1").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/mx?domain=shop.test");
    let cookie = r.set_cookie(SESSION_COOKIE).unwrap();
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let c = e.state.engine().config();
    assert_eq!(c.hostname.0, "gw.example.test");
    assert!(c.domains.iter().any(|d| d.domain().as_str() == "shop.test" && d.ready()));
    let file = std::fs::read_to_string(e.state.engine().config_path().unwrap()).unwrap();
    assert!(file.starts_with("# test appliance"), "comments kept: {file}");
    assert!(auth::verify_password(
        "correct horse battery",
        &e.state.store().user_get("admin").unwrap().unwrap().password_hash
    ));
    // A second setup is refused, and the page is gone.
    let r = send(
        &e,
        "POST",
        "/setup",
        &format!("{PRE_COOKIE}={token}"),
        &body.replace("correct", "another"),
        &[],
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&e, "/setup", "").await.location(), "/login");
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &["admin@example.test"]);
    let a = login(&e, "admin").await;
    let id = quarantined(&e, "admin@example.test", "hello", "<p>hi</p>").await;
    for (path, cookie) in [
        ("/login", ""),
        ("/dashboard", ""),
        ("/nope", ""),
        ("/static/app.js", ""),
        ("/static/app.css", ""),
        ("/api/v1/me", ""),
        ("/api/v1/openapi.json", ""),
        ("/metrics", ""),
        ("/dashboard", a.cookie.as_str()),
        ("/quarantine", a.cookie.as_str()),
        (&format!("/quarantine/{id}"), a.cookie.as_str()),
        (&format!("/quarantine/{id}/attachment/0"), a.cookie.as_str()),
        ("/system/config", a.cookie.as_str()),
    ] {
        let r = get(&e, path, cookie).await;
        assert_security_headers(&r, path);
    }
    // The message frame: its own strict CSP, framable by us only.
    let r = get(&e, &format!("/quarantine/{id}/body"), &a.cookie).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("content-security-policy").unwrap(), FRAME_CSP);
    assert_eq!(r.headers.get("x-frame-options").unwrap(), "SAMEORIGIN");
    assert_eq!(r.headers.get("x-content-type-options").unwrap(), "nosniff");
    // Attachments only as downloads.
    let r = get(&e, &format!("/quarantine/{id}/attachment/0"), &a.cookie).await;
    assert_eq!(r.headers.get("content-type").unwrap(), "application/octet-stream");
    let cd = r.headers.get("content-disposition").unwrap().to_str().unwrap();
    assert!(
        cd.starts_with("attachment; filename=\"") && !cd.contains('<') && !cd.contains('/'),
        "{cd}"
    );
    assert_eq!(r.body, "MZP");
}

#[tokio::test]
async fn login_gives_one_answer_and_throttles_pairs_and_sources() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &[]);
    let strip = |s: &str| {
        s.split("name=\"_csrf\" value=\"").map(|p| p.get(64..).unwrap_or(p)).collect::<String>()
    };
    let wrong = try_login(&e, "admin", "not the password", "192.0.2.50").await;
    let unknown = try_login(&e, "nobody", "not the password", "192.0.2.51").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(
        strip(&wrong.body),
        strip(&unknown.body),
        "same page for unknown user and wrong password"
    );
    assert!(wrong.set_cookie(SESSION_COOKIE).is_none());

    // Five failures for (admin, A): A is blocked for admin even with the right password...
    for _ in 0..auth::PAIR_LIMIT {
        try_login(&e, "admin", "wrong password!", "198.51.100.1").await;
    }
    let r = try_login(&e, "admin", PASSWORD, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // ...but the admin still gets in from elsewhere: no global account lock.
    let r = try_login(&e, "admin", PASSWORD, "198.51.100.2").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // A source spraying many accounts hits its own cap, then is refused for every account.
    for i in 0..auth::SOURCE_LIMIT {
        try_login(&e, &format!("user{i}"), "x", "203.0.113.7").await;
    }
    let r = try_login(&e, "admin", PASSWORD, "203.0.113.7").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(try_login(&e, "admin", PASSWORD, "203.0.113.8").await.status, StatusCode::SEE_OTHER);
    // A malformed stored hash never authenticates.
    let mut u = e.state.store().user_get("admin").unwrap().unwrap();
    u.password_hash = "$argon2id$broken".into();
    e.state.store().user_put(&u).unwrap();
    assert_eq!(
        try_login(&e, "admin", PASSWORD, "192.0.2.99").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sessions_renew_expire_and_end() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &[]);
    let a = login(&e, "admin").await;
    let b = login(&e, "admin").await;
    assert_ne!(a.cookie, b.cookie, "a fresh session id at every login");
    assert_ne!(a.csrf, b.csrf);
    // A session id the browser brings along is never adopted: login sets a new one.
    let r = try_login(&e, "admin", PASSWORD, "192.0.2.1").await;
    assert!(!r.set_cookie(SESSION_COOKIE).unwrap().contains(a.cookie.split('=').nth(1).unwrap()));
    assert_eq!(get(&e, "/dashboard", &a.cookie).await.status, StatusCode::OK);
    // Logout ends the session.
    assert_eq!(post(&e, &a, "/logout", "").await.status, StatusCode::SEE_OTHER);
    assert_eq!(get(&e, "/dashboard", &a.cookie).await.location(), "/login");
    // Idle timeout.
    let id = b.cookie.split('=').nth(1).unwrap();
    let digest = auth::digest(id);
    let mut s = e.state.store().session_get(&digest).unwrap().unwrap();
    s.last_seen = now() - auth::IDLE_TIMEOUT_SECS - 1;
    e.state.store().session_put(&digest, &s).unwrap();
    assert_eq!(get(&e, "/dashboard", &b.cookie).await.location(), "/login");
    // Absolute timeout, however busy.
    let c = login(&e, "admin").await;
    let digest = auth::digest(c.cookie.split('=').nth(1).unwrap());
    let mut s = e.state.store().session_get(&digest).unwrap().unwrap();
    s.created_at = now() - auth::ABSOLUTE_TIMEOUT_SECS - 1;
    e.state.store().session_put(&digest, &s).unwrap();
    assert_eq!(get(&e, "/dashboard", &c.cookie).await.location(), "/login");
    // A password change ends every other session and renews the current one.
    let d = login(&e, "admin").await;
    let other = login(&e, "admin").await;
    let r = post(
        &e,
        &d,
        "/account/password",
        &format!("current={}&password=another+long+password", PASSWORD.replace(' ', "+")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let renewed = session_of(&e, &r);
    assert_ne!(renewed.cookie, d.cookie);
    assert_eq!(get(&e, "/dashboard", &d.cookie).await.location(), "/login");
    assert_eq!(get(&e, "/dashboard", &other.cookie).await.location(), "/login");
    assert_eq!(get(&e, "/dashboard", &renewed.cookie).await.status, StatusCode::OK);
}

/// Every state-changing route, with a body that would be valid.
const POSTS: &[(&str, &str)] = &[
    ("/logout", ""),
    ("/domains", "name=new.test&downstream=127.0.0.1%3A25&tls=none&enabled=on"),
    ("/domains/delete", "name=example.test"),
    ("/policy", "tag_at=4&quarantine_at=6&reject_at=15&quarantine_days=10"),
    ("/policy/weight", "symbol=X&weight=1"),
    ("/domains/policy", "name=example.test&reject_at=9"),
    ("/domains/policy/weight", "name=example.test&symbol=X&weight=1"),
    ("/lists", "entry=block+sender-domain+spam.test"),
    ("/lists/1/delete", ""),
    ("/quarantine/bulk", "action=delete&ids=0000000000000001"),
    ("/quarantine/0000000000000001/release", ""),
    ("/queue/0000000000000001/retry", ""),
    ("/queue/0000000000000001/delete", ""),
    ("/reports", "frequency=daily&recipients=a%40example.test"),
    ("/reports/1/delete", ""),
    ("/reports/1/send", ""),
    ("/users", "name=eve&role=admin&password=long+enough+pw"),
    ("/users/admin/delete", ""),
    ("/users/admin/password", "password=long+enough+pw"),
    ("/account/password", "current=x&password=long+enough+pw"),
    ("/account/digest", "digest=never"),
    ("/account/tokens", "label=x"),
    ("/account/tokens/1/delete", ""),
    ("/system/config", "config=x"),
    ("/system/certificate", "cert=x&key=y"),
    ("/my/lists", "kind=block&what=sender&value=a%40b.test&address=admin%40example.test"),
    ("/my/lists/1/delete", ""),
];

#[tokio::test]
async fn every_post_needs_the_session_csrf_token_and_gets_change_nothing() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &["admin@example.test"]);
    let a = login(&e, "admin").await;
    let other = login(&e, "admin").await;
    let config_before = std::fs::read_to_string(e.state.engine().config_path().unwrap()).unwrap();
    for (path, body) in POSTS {
        for token in [String::new(), "0".repeat(64), other.csrf.clone()] {
            let b =
                if token.is_empty() { body.to_string() } else { format!("_csrf={token}&{body}") };
            let r = send(&e, "POST", path, &a.cookie, &b, &[], "192.0.2.1").await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with csrf {token:?}");
        }
        // GET on a state-changing route never acts (405, or a page that only shows).
        let r = get(&e, path, &a.cookie).await;
        assert!(
            r.status == StatusCode::METHOD_NOT_ALLOWED || r.status == StatusCode::OK,
            "{path}: {}",
            r.status
        );
        // Cross-site posts are refused even with a good token.
        let r = send(
            &e,
            "POST",
            path,
            &a.cookie,
            &format!("_csrf={}&{body}", a.csrf),
            &[("sec-fetch-site", "cross-site")],
            "192.0.2.1",
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} cross-site");
    }
    assert_eq!(
        std::fs::read_to_string(e.state.engine().config_path().unwrap()).unwrap(),
        config_before
    );
    assert_eq!(e.state.store().users_len(), 1);
    assert!(e.state.store().list_all().unwrap().is_empty());
    assert_eq!(get(&e, "/dashboard", &a.cookie).await.status, StatusCode::OK, "still logged in");
    // Pre-session forms need their double-submit cookie too.
    let r = send(
        &e,
        "POST",
        "/login",
        "",
        &format!("_csrf={}&username=admin&password=x", "a".repeat(64)),
        &[],
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn roles_see_and_change_only_what_they_may() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &[]);
    add_user(&e, "qm", Role::QuarantineManager, &[]);
    add_user(&e, "aud", Role::Auditor, &[]);
    add_user(&e, "bob", Role::User, &["bob@example.test"]);
    let (admin, qm, aud, bob) = (
        login(&e, "admin").await,
        login(&e, "qm").await,
        login(&e, "aud").await,
        login(&e, "bob").await,
    );
    // GET pages: (path, admin, qm, auditor, user) -> expected status.
    const OK: u16 = 200;
    const NO: u16 = 403;
    let pages: &[(&str, [u16; 4])] = &[
        ("/dashboard", [OK, OK, OK, NO]),
        ("/log", [OK, OK, OK, NO]),
        ("/queue", [OK, OK, OK, NO]),
        ("/domains", [OK, OK, OK, NO]),
        ("/policy", [OK, OK, OK, NO]),
        ("/policy/symbols", [OK, OK, OK, NO]),
        ("/lists", [OK, OK, OK, NO]),
        ("/reports", [OK, NO, NO, NO]),
        ("/users", [OK, NO, NO, NO]),
        ("/system", [OK, NO, NO, NO]),
        ("/system/config", [OK, NO, NO, NO]),
        ("/my/quarantine", [OK, OK, OK, OK]),
        ("/my/lists", [OK, OK, OK, OK]),
        ("/account", [OK, OK, OK, OK]),
        ("/api/v1/log", [OK, OK, OK, NO]),
        ("/api/v1/queue", [OK, OK, OK, NO]),
        ("/api/v1/lists", [OK, OK, OK, NO]),
        ("/api/v1/me", [OK, OK, OK, OK]),
        ("/metrics", [OK, OK, OK, NO]),
    ];
    for (path, want) in pages {
        for (who, w) in [&admin, &qm, &aud, &bob].iter().zip(want) {
            let r = get(&e, path, &who.cookie).await;
            assert_eq!(r.status.as_u16(), *w, "{path} as {}", who.cookie);
        }
    }
    // Staff quarantine list sends end users to their own.
    assert_eq!(get(&e, "/quarantine", &bob.cookie).await.location(), "/my/quarantine");
    // Changes: settings are admin-only; lists admin and quarantine manager.
    let settings = [
        ("/domains", "name=x.test&downstream=127.0.0.1%3A25&tls=none&enabled=on"),
        ("/policy", "tag_at=4&quarantine_at=6&reject_at=15&quarantine_days=10"),
        ("/users", "name=eve&role=admin&password=long+enough+pw"),
        ("/reports", "frequency=daily&recipients=a%40example.test"),
    ];
    for (path, body) in settings {
        for who in [&qm, &aud, &bob] {
            assert_eq!(post(&e, who, path, body).await.status, StatusCode::FORBIDDEN, "{path}");
        }
    }
    assert!(e.state.store().user_get("eve").unwrap().is_none());
    for who in [&aud, &bob] {
        assert_eq!(
            post(&e, who, "/lists", "entry=block+sender-domain+spam.test").await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        post(&e, &qm, "/lists", "entry=block+sender-domain+spam.test").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(e.state.store().list_all().unwrap().len(), 1);
    // An end user's own list: only for their own address, only senders.
    let r = post(
        &e,
        &bob,
        "/my/lists",
        "kind=allow&what=sender&value=friend%40ok.test&address=alice%40example.test",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(
        &e,
        &bob,
        "/my/lists",
        "kind=allow&what=sender&value=friend%40ok.test&address=bob%40example.test",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let all = e.state.store().list_all().unwrap();
    let mine = all.iter().find(|x| x.entry.contains("friend@ok.test")).unwrap();
    assert_eq!(mine.entry, "allow sender friend@ok.test for rcpt:bob@example.test");
    let global = all.iter().find(|x| x.entry.contains("spam.test")).unwrap();
    assert_eq!(
        post(&e, &bob, &format!("/my/lists/{}/delete", global.id), "").await.status,
        StatusCode::NOT_FOUND,
        "not bob's"
    );
    assert_eq!(
        post(&e, &bob, &format!("/my/lists/{}/delete", mine.id), "").await.status,
        StatusCode::SEE_OTHER
    );
    // Admin changes go through the config file.
    assert_eq!(
        post(&e, &admin, "/domains", "name=x.test&downstream=127.0.0.1%3A25&tls=none&enabled=on")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert!(e.state.engine().config().domains.iter().any(|d| d.domain().as_str() == "x.test"));
    let r = post(&e, &admin, "/policy", "tag_at=9&quarantine_at=6&reject_at=15&quarantine_days=10")
        .await;
    assert!(r.location().contains("msg="), "refused with a message: {}", r.location());
    assert_eq!(e.state.engine().config().policy.tag_at, levee_config::Policy::default().tag_at);
}

#[tokio::test]
async fn no_one_sees_or_acts_on_another_users_mail() {
    let e = env();
    add_user(&e, "bob", Role::User, &["bob@example.test"]);
    add_user(&e, "carol", Role::User, &["carol@example.test"]);
    add_user(&e, "aud", Role::Auditor, &[]);
    let (bob, carol, aud) =
        (login(&e, "bob").await, login(&e, "carol").await, login(&e, "aud").await);
    let mine = quarantined(
        &e,
        "bob@example.test",
        "<script>window.__pwned=1</script>bob's",
        "<p>hi bob</p><script>window.__pwned=1</script>",
    )
    .await;
    let theirs = quarantined(&e, "carol@example.test", "carol's", "<p>hi carol</p>").await;

    let list = get(&e, "/my/quarantine", &bob.cookie).await;
    assert!(list.body.contains(mine.as_str()) && !list.body.contains(theirs.as_str()));
    assert!(!list.body.contains("<script>window"), "subjects are escaped");
    assert!(list.body.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;bob"));
    // Guessing carol's id: not found, for every way in.
    for path in [
        format!("/quarantine/{theirs}"),
        format!("/quarantine/{theirs}/body"),
        format!("/quarantine/{theirs}/attachment/0"),
        format!("/api/v1/quarantine/{theirs}"),
    ] {
        assert_eq!(get(&e, &path, &bob.cookie).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    for action in ["release", "release-allow", "report", "delete"] {
        assert_eq!(
            post(&e, &bob, &format!("/quarantine/{theirs}/{action}"), "").await.status,
            StatusCode::NOT_FOUND,
            "{action}"
        );
    }
    let r =
        post(&e, &bob, "/quarantine/bulk", &format!("action=delete&ids={theirs}&ids=ZZZ")).await;
    assert!(r.location().contains("0%20of%202"), "{}", r.location());
    assert!(e.state.store().quarantine_get(&theirs).unwrap().is_some());
    let api = get(&e, "/api/v1/quarantine", &bob.cookie).await;
    let v: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["items"][0]["id"], mine.as_str());
    // An auditor sees everything but changes nothing.
    assert_eq!(get(&e, &format!("/quarantine/{theirs}"), &aud.cookie).await.status, StatusCode::OK);
    assert_eq!(
        post(&e, &aud, &format!("/quarantine/{theirs}/delete"), "").await.status,
        StatusCode::FORBIDDEN
    );
    // Bob's own message: viewable safely, and releasable.
    let view = get(&e, &format!("/quarantine/{mine}"), &bob.cookie).await;
    assert_eq!(view.status, StatusCode::OK);
    assert!(
        view.body.contains("sandbox=\"\"")
            && view.body.contains(&format!("/quarantine/{mine}/body"))
    );
    assert!(!view.body.contains("<script>window"));
    let frame = get(&e, &format!("/quarantine/{mine}/body"), &bob.cookie).await;
    assert!(frame.body.contains("hi bob") && !frame.body.contains("<script"), "{}", frame.body);
    let r = post(&e, &bob, &format!("/quarantine/{mine}/release-allow"), "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(e.state.store().quarantine_get(&mine).unwrap().is_none());
    assert!(!e.state.store().queue_get(&mine).unwrap().unwrap().held);
    let lists = e.state.store().list_all().unwrap();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].entry, "allow sender mallory@evil.test for rcpt:bob@example.test");
    let _ = carol;
}

#[tokio::test]
async fn api_tokens_and_metrics() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &[]);
    add_user(&e, "aud", Role::Auditor, &[]);
    let admin = login(&e, "admin").await;
    let token = "t".repeat(40);
    e.state.store().token_add(&auth::digest(&token), "aud", "prometheus", 1).unwrap();
    let bearer = format!("Bearer {token}");
    let r = send(&e, "GET", "/metrics", "", "", &[("authorization", &bearer)], "192.0.2.1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("levee_queue_messages 0")
            && r.body.contains("levee_domain_ready{domain=\"example.test\"} 1"),
        "{}",
        r.body
    );
    assert_eq!(get(&e, "/metrics", "").await.status, StatusCode::UNAUTHORIZED);
    let r =
        send(&e, "GET", "/api/v1/me", "", "", &[("authorization", "Bearer wrong")], "192.0.2.1")
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The auditor's token cannot change lists.
    let json = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let r = send(
        &e,
        "POST",
        "/api/v1/lists",
        "",
        r#"{"entry":"block ip 192.0.2.0/24"}"#,
        &json,
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A session must send its CSRF header on API posts.
    let cj = [("content-type", "application/json")];
    let r = send(
        &e,
        "POST",
        "/api/v1/lists",
        &admin.cookie,
        r#"{"entry":"block ip 192.0.2.0/24"}"#,
        &cj,
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let with = [("content-type", "application/json"), ("x-csrf-token", admin.csrf.as_str())];
    let r = send(
        &e,
        "POST",
        "/api/v1/lists",
        &admin.cookie,
        r#"{"entry":"block ip 192.0.2.0/24"}"#,
        &with,
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // An admin token may.
    let admin_token = "a".repeat(40);
    e.state.store().token_add(&auth::digest(&admin_token), "admin", "script", 1).unwrap();
    let ab = format!("Bearer {admin_token}");
    let r = send(
        &e,
        "POST",
        "/api/v1/lists",
        "",
        r#"{"entry":"allow sender-domain good.test"}"#,
        &[("authorization", &ab), ("content-type", "application/json")],
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(e.state.store().list_all().unwrap().len(), 2);
    let spec: serde_json::Value =
        serde_json::from_str(&get(&e, "/api/v1/openapi.json", "").await.body).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/quarantine/{id}/{action}"]["post"].is_object());
}

#[tokio::test]
async fn signed_links_release_once_for_their_recipient_only() {
    let e = env();
    let id = quarantined(&e, "bob@example.test", "held", "<p>x</p>").await;
    let other = quarantined(&e, "carol@example.test", "held", "<p>x</p>").await;
    let key = *e.state.link_key();
    let link = |id: &QueueId, rcpt: &str, action| {
        links::sign(
            &key,
            &links::Link { action, id: id.clone(), rcpt: rcpt.into(), expires: now() + 3600 },
        )
    };
    let good = link(&id, "bob@example.test", links::LinkAction::ReleaseAllow);
    // Bob's link pointed at carol's message: nothing.
    assert_eq!(
        get(
            &e,
            &format!("/a/{}", link(&other, "bob@example.test", links::LinkAction::Release)),
            ""
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let tampered = good.replacen("allow", "release", 1);
    assert_eq!(get(&e, &format!("/a/{tampered}"), "").await.status, StatusCode::NOT_FOUND);
    // GET only shows a confirmation; the message stays held.
    let page = get(&e, &format!("/a/{good}"), "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(e.state.store().quarantine_get(&id).unwrap().is_some());
    let pre = page.set_cookie(PRE_COOKIE).unwrap();
    let t = pre.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    assert_eq!(
        send(&e, "POST", &format!("/a/{good}"), "", &format!("_csrf={t}"), &[], "192.0.2.1")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = send(
        &e,
        "POST",
        &format!("/a/{good}"),
        &format!("{PRE_COOKIE}={t}"),
        &format!("_csrf={t}"),
        &[],
        "192.0.2.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(e.state.store().quarantine_get(&id).unwrap().is_none());
    assert_eq!(
        e.state.store().list_all().unwrap()[0].entry,
        "allow sender mallory@evil.test for rcpt:bob@example.test"
    );
    // Used up: the message is no longer held.
    assert_eq!(get(&e, &format!("/a/{good}"), "").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn digests_and_reports_go_through_the_queue() {
    let e = env();
    add_user(&e, "bob", Role::User, &["bob@example.test"]);
    let id = quarantined(&e, "bob@example.test", "Cheap <pills>", "<p>x</p>").await;
    let before = e.state.store().queue_all().unwrap().len();
    let bob = e.state.store().user_get("bob").unwrap().unwrap();
    let text = mailout::digest_text(&e.state, &bob, 0, now()).unwrap().unwrap();
    assert!(
        text.contains("Cheap <pills>") && text.contains("https://mx.example.test/a/"),
        "{text}"
    );
    let token =
        text.lines().find_map(|l| l.strip_prefix("Release: https://mx.example.test/a/")).unwrap();
    assert_eq!(links::verify(e.state.link_key(), token, now()).unwrap().id, id);
    mailout::tick(&e.state, now()).await.unwrap();
    assert_eq!(e.state.store().queue_all().unwrap().len(), before + 1, "digest queued");
    assert!(e.state.store().user_get("bob").unwrap().unwrap().digest_last_sent > 0);
    mailout::tick(&e.state, now()).await.unwrap();
    assert_eq!(e.state.store().queue_all().unwrap().len(), before + 1, "not twice");
    e.state
        .store()
        .schedule_put(&levee_store::ReportSchedule {
            id: 0,
            frequency: Frequency::Daily,
            recipients: vec!["boss@example.test".into()],
            last_sent: 0,
        })
        .unwrap();
    mailout::tick(&e.state, now()).await.unwrap();
    assert_eq!(e.state.store().queue_all().unwrap().len(), before + 2, "report queued");
}

#[tokio::test]
async fn an_end_user_releases_and_deletes_only_for_their_own_address() {
    let e = env();
    add_user(&e, "bob", Role::User, &["bob@example.test"]);
    add_user(&e, "carol", Role::User, &["carol@example.test"]);
    let (bob, carol) = (login(&e, "bob").await, login(&e, "carol").await);
    let id = quarantined(&e, "bob@example.test", "for both", "<p>both</p>").await;
    // Make it a message to both of them.
    let store = e.state.store();
    let mut q = store.quarantine_get(&id).unwrap().unwrap();
    q.rcpt_to.push("carol@example.test".into());
    store.quarantine_put(&q).unwrap();
    let mut entry = store.queue_get(&id).unwrap().unwrap();
    let mut carol_state = entry.recipients[0].clone();
    carol_state.rcpt = "carol@example.test".into();
    entry.recipients.push(carol_state);
    store.queue_put(&entry).unwrap();
    let queued_before = store.queue_all().unwrap().len();

    let r = post(&e, &bob, &format!("/quarantine/{id}/release"), "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // Carol's copy is still held, and only hers.
    let q = store.quarantine_get(&id).unwrap().expect("still held for carol");
    assert_eq!(q.rcpt_to, vec!["carol@example.test".to_string()]);
    let held = store.queue_get(&id).unwrap().unwrap();
    assert!(held.held);
    assert_eq!(held.recipients.len(), 1);
    assert_eq!(held.recipients[0].rcpt, "carol@example.test");
    // Bob's copy is a new, unheld queue entry for bob alone (or already delivered).
    let all = store.queue_all().unwrap();
    assert!(all.len() <= queued_before + 1);
    for other in all.iter().filter(|q| q.id != id) {
        assert!(other.recipients.iter().all(|r| r.rcpt != "carol@example.test"));
    }
    // Bob no longer sees it; carol does, and deleting it for her removes it.
    assert_eq!(
        get(&e, &format!("/quarantine/{id}"), &bob.cookie).await.status,
        StatusCode::NOT_FOUND
    );
    let r = post(&e, &carol, &format!("/quarantine/{id}/delete"), "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(store.quarantine_get(&id).unwrap().is_none());
    assert!(store.queue_get(&id).unwrap().is_none());
}

#[tokio::test]
async fn the_system_page_shows_the_recent_log_escaped_and_policy_shows_list_health() {
    let e = env();
    add_user(&e, "root", Role::Admin, &[]);
    let admin = login(&e, "root").await;
    let ring = std::sync::Arc::new(levee_relay::health::LogRing::new(10));
    ring.push(
        "INFO levee_relay: accepted id=1 from=<x@evil.test> subject=<script>alert(1)</script>",
    );
    e.state.engine().set_log_ring(ring);
    let r = get(&e, "/system", &admin.cookie).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("accepted id=1"), "{}", r.body);
    assert!(!r.body.contains("<script>alert"), "log lines are escaped");
    let r = get(&e, "/policy", &admin.cookie).await;
    assert!(r.body.contains("No DNS lists are configured"), "{}", r.body);
}

#[tokio::test]
async fn the_symbols_page_lists_levee_and_spamassassin_symbols_with_overrides() {
    let e = env();
    add_user(&e, "root", Role::Admin, &[]);
    let admin = login(&e, "root").await;
    assert!(e.state.engine().sa_rules().is_some(), "the stock rules (spamassassin package) load");
    let r = post(&e, &admin, "/policy/weight", "symbol=SA_GTUBE&weight=500").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = get(&e, "/policy/symbols?q=gtube", &admin.cookie).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("<code>GTUBE</code>"), "{}", r.body);
    assert!(r.body.contains("<code>SA_GTUBE</code></td><td><b>500.00</b>"), "{}", r.body);
    assert!(!r.body.contains("SA_BAYES_99"), "the filter keeps other symbols out");
    let all = get(&e, "/policy/symbols", &admin.cookie).await;
    assert!(all.body.contains("SpamAssassin-language rules from /usr/share/spamassassin"));
    assert!(all.body.matches("<tr>").count() > 800, "every scored rule is listed");
}

#[path = "../../levee-netcheck/tests/common/mmdb.rs"]
#[allow(dead_code)]
mod mmdb;

/// Posts raw bytes to the API with the session's CSRF header.
async fn post_bytes(e: &Env, l: &Login, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::COOKIE, &l.cookie)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("x-csrf-token", &l.csrf)
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(Peer(SocketAddr::new("192.0.2.1".parse().unwrap(), 40000)));
    let r = e.app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_admin_installs_a_country_database_and_only_a_valid_one() {
    let e = env();
    add_user(&e, "root", Role::Admin, &[]);
    add_user(&e, "aud", Role::Auditor, &[]);
    let (admin, aud) = (login(&e, "root").await, login(&e, "aud").await);
    let db = mmdb::country_db(&[("192.0.2.0/24", "DE")]);
    // Not an admin: refused.
    assert_eq!(post_bytes(&e, &aud, "/api/v1/geoip", db.clone()).await.0, StatusCode::FORBIDDEN);
    // Junk: refused, nothing changes.
    let (status, body) = post_bytes(&e, &admin, "/api/v1/geoip", b"not a database".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(e.state.engine().config().checks.geoip_db.is_none());
    // A real database: installed, configured, and the policy page says so.
    let (status, body) = post_bytes(&e, &admin, "/api/v1/geoip", db).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = e.state.engine().config().checks.geoip_db.clone().expect("configured");
    assert!(
        levee_netcheck::GeoIp::open(&path)
            .unwrap()
            .country("192.0.2.7".parse().unwrap())
            .as_deref()
            == Some("DE")
    );
    let page = get(&e, "/policy", &admin.cookie).await;
    assert!(page.body.contains("country.mmdb"), "{}", page.body);
}

#[tokio::test]
async fn the_domain_page_shows_and_edits_each_domains_own_policy() {
    let e = env();
    add_user(&e, "admin", Role::Admin, &[]);
    let admin = login(&e, "admin").await;
    let domain =
        |name: &str| "name=".to_string() + name + "&downstream=127.0.0.1%3A9&tls=none&enabled=on";
    for name in ["second.test", "third.test"] {
        assert_eq!(post(&e, &admin, "/domains", &domain(name)).await.status, StatusCode::SEE_OTHER);
    }
    let policy_of = |name: &str| {
        let c = e.state.engine().config();
        let d = levee_types::Domain::parse(name).unwrap();
        (c.domain(&d).unwrap().policy.clone(), c.policy_for(&d))
    };
    // Own thresholds for the first domain only; empty fields follow the global policy.
    let r =
        post(&e, &admin, "/domains/policy", "name=example.test&tag_at=&quarantine_at=&reject_at=9")
            .await;
    assert!(r.location().contains("Saved"), "{}", r.location());
    let (own, eff) = policy_of("example.test");
    let own = own.unwrap();
    assert_eq!((own.tag_at, own.quarantine_at, own.reject_at), (None, None, Some(9.0)));
    assert_eq!((eff.tag_at, eff.quarantine_at, eff.reject_at), (4.0, 6.0, 9.0));
    let r = post(
        &e,
        &admin,
        "/domains/policy",
        "name=example.test&tag_at=2&quarantine_at=3&reject_at=5",
    )
    .await;
    assert!(r.location().contains("Saved"), "{}", r.location());
    assert_eq!(policy_of("example.test").1.quarantine_at, 3.0);
    assert!(policy_of("second.test").0.is_none() && policy_of("third.test").0.is_none());
    // A weight for the last domain; the file stays one domain per table.
    let r = post(&e, &admin, "/domains/policy/weight", "name=third.test&symbol=SPF_FAIL&weight=9")
        .await;
    assert!(r.location().contains("Saved"), "{}", r.location());
    assert_eq!(policy_of("third.test").1.weights["SPF_FAIL"], 9.0);
    assert!(policy_of("second.test").0.is_none());
    assert_eq!(policy_of("example.test").0.unwrap().weights.len(), 0);
    // Shown on the page: effective thresholds per domain, the own ones marked.
    let page = get(&e, "/domains", &admin.cookie).await.body;
    assert!(
        page.contains("<strong title=\"this domain&#39;s own value\">3</strong>")
            || page.contains("<strong title=\"this domain's own value\">3</strong>"),
        "{page}"
    );
    assert!(page.contains("SPF_FAIL"), "{page}");
    // Thresholds out of order once merged are refused by the config's own check.
    let r = post(&e, &admin, "/domains/policy", "name=second.test&reject_at=2").await;
    assert!(r.location().contains("msg="), "{}", r.location());
    assert!(policy_of("second.test").0.is_none());
    let r = post(&e, &admin, "/domains/policy", "name=second.test&reject_at=many").await;
    assert!(r.location().contains("msg="), "{}", r.location());
    // Clearing: the weight, then everything.
    post(&e, &admin, "/domains/policy/weight", "name=third.test&symbol=SPF_FAIL&weight=").await;
    assert!(policy_of("third.test").0.is_none(), "an emptied override is removed");
    post(&e, &admin, "/domains/policy", "name=example.test&clear=on").await;
    assert!(policy_of("example.test").0.is_none());
    let text = std::fs::read_to_string(e.state.engine().config_path().unwrap()).unwrap();
    assert!(!text.contains("policy"), "{text}");
    // Only admins change settings.
    add_user(&e, "qm", Role::QuarantineManager, &[]);
    let qm = login(&e, "qm").await;
    let r = post(&e, &qm, "/domains/policy", "name=example.test&reject_at=9").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, text) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[tokio::test]
async fn the_admin_trains_the_running_model_from_an_uploaded_zip() {
    let e = env();
    add_user(&e, "root", Role::Admin, &[]);
    add_user(&e, "qm", Role::QuarantineManager, &[]);
    let (admin, qm) = (login(&e, "root").await, login(&e, "qm").await);
    let page = get(&e, "/training", &admin.cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("training-progress"), "{}", page.body);
    assert_eq!(get(&e, "/training", &qm.cookie).await.status, StatusCode::FORBIDDEN);
    let maildir = zip_of(&[
        ("Junk/cur/1:2,S", "Subject: cheap pills\r\n\r\nbuy cheap pills now\r\n"),
        ("Junk/new/2", "Subject: casino\r\n\r\nfree casino bonus\r\n"),
        ("Junk/tmp/3", "Subject: half written\r\n"),
        ("Junk/dovecot-uidlist", "3 V1 N4\r\n"),
    ]);
    // Not an admin, or no CSRF token: refused, nothing learned.
    assert_eq!(
        post_bytes(&e, &qm, "/api/v1/training?label=spam", maildir.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let no_csrf = Login { cookie: admin.cookie.clone(), csrf: "wrong".into() };
    assert_eq!(
        post_bytes(&e, &no_csrf, "/api/v1/training?label=spam", maildir.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) =
        post_bytes(&e, &admin, "/api/v1/training?label=maybe", maildir.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(e.state.engine().model_counts(), (0, 0));
    // The admin's upload: two messages (tmp/ and the IMAP server's files are not mail).
    let (status, body) = post_bytes(&e, &admin, "/api/v1/training?label=spam", maildir).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"messages\":2"), "{body}");
    let mut last = String::new();
    for _ in 0..200 {
        last = get(&e, "/api/v1/training", &admin.cookie).await.body;
        if last.contains("\"finished\":true") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(last.contains("\"done\":2") && last.contains("\"error\":null"), "{last}");
    assert!(last.contains("\"spam\":2"), "{last}");
    assert_eq!(e.state.engine().model_counts(), (2, 0));
    // A zip of .eml files as ham; junk is refused with a reason.
    let emls = zip_of(&[("a.eml", "Subject: agenda\r\n\r\nmeeting at ten\r\n")]);
    assert_eq!(post_bytes(&e, &admin, "/api/v1/training?label=ham", emls).await.0, StatusCode::OK);
    let (status, body) =
        post_bytes(&e, &admin, "/api/v1/training?label=ham", b"PK\x03\x04junk".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for _ in 0..200 {
        if e.state.engine().model_counts() == (2, 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(e.state.engine().model_counts(), (2, 1));
}

/// A gzipped tar of `(path, contents)` entries; a `None` contents is a symlink to `local.cf`.
/// Paths are written into the header as they are, so an archive can carry `../`.
fn rules_tarball(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(0o644);
        match data {
            Some(d) => {
                h.set_size(d.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                b.append(&h, d.as_bytes()).unwrap();
            }
            None => {
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name("local.cf").unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

const LOCAL_RULE: &str = "# a local rule\nheader LEVEE_LOCAL_TEST Subject =~ /levee local test/i\n\
                          describe LEVEE_LOCAL_TEST Subject names the local test\n\
                          score LEVEE_LOCAL_TEST 2.5\n";

#[tokio::test]
async fn the_admin_uploads_local_rules_tried_before_they_replace_the_old() {
    if !std::path::Path::new(levee_filter::sa::STOCK_DIR).is_dir() {
        eprintln!("skipped: no stock SpamAssassin rules installed");
        return;
    }
    let e = env();
    add_user(&e, "root", Role::Admin, &[]);
    add_user(&e, "aud", Role::Auditor, &[]);
    let (admin, aud) = (login(&e, "root").await, login(&e, "aud").await);
    let engine = e.state.engine().clone();
    let local = engine.local_rules_dir();
    let good = rules_tarball(&[("rules/", None), ("rules/local.cf", Some(LOCAL_RULE))]);
    // `rules/` above is a link: refused, nothing written.
    let (status, body) = post_bytes(&e, &admin, "/api/v1/rules", good).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("link"), "{body}");
    assert!(!local.exists());

    // Not an admin: refused.
    let good = rules_tarball(&[("./local.cf", Some(LOCAL_RULE)), ("README", Some("hi"))]);
    assert_eq!(post_bytes(&e, &aud, "/api/v1/rules", good.clone()).await.0, StatusCode::FORBIDDEN);
    // A good tarball: installed privately, loaded, on the symbols page and in the policy.
    let (status, body) = post_bytes(&e, &admin, "/api/v1/rules", good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"files\":[\"local.cf\"]"), "{body}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&local), mode(&local.join("local.cf"))), (0o700, 0o600));
    assert!(!local.join("README").exists());
    let rules = engine.sa_rules().expect("rules loaded");
    assert_eq!(rules.dirs.last(), Some(&local));
    let weight = engine.global_policy().rule_scores.get("SA_LEVEE_LOCAL_TEST").copied();
    assert_eq!(weight, Some(2.5 * levee_filter::sa::SCORE_SCALE));
    let page = get(&e, "/policy/symbols?q=levee_local", &admin.cookie).await;
    assert!(page.body.contains("SA_LEVEE_LOCAL_TEST"), "{}", page.body);
    assert!(page.body.contains("Subject names the local test"));
    let page = get(&e, "/policy/rules", &admin.cookie).await;
    assert!(page.body.contains("local.cf") && page.body.contains("Skipped because"));

    // A bad file: refused with its name and line; the old rules stay, on disk and in use.
    let bad = "header LEVEE_LOCAL_BAD Subject =~ /x/\n\nscore LEVEE_LOCAL_BAD lots\n";
    let (status, body) =
        post_bytes(&e, &admin, "/api/v1/rules?name=broken.cf", bad.as_bytes().to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("broken.cf:3:"), "{body}");
    assert_eq!(std::fs::read_to_string(local.join("local.cf")).unwrap(), LOCAL_RULE);
    assert!(!local.join("broken.cf").exists());
    assert!(engine.global_policy().rule_scores.contains_key("SA_LEVEE_LOCAL_TEST"));
    // A path that climbs out: refused, and nothing was written next to the data directory.
    let evil = rules_tarball(&[("../evil.cf", Some(LOCAL_RULE))]);
    let (status, body) = post_bytes(&e, &admin, "/api/v1/rules", evil).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("outside"), "{body}");
    assert!(!e.dir.join("evil.cf").exists() && !e.dir.join("data").join("evil.cf").exists());
    // No staged folder is left behind.
    let leftovers = std::fs::read_dir(e.dir.join("data"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|d| d.file_name().to_string_lossy().starts_with("rules."))
        .count();
    assert_eq!(leftovers, 0);

    // Removed: the rule is gone from the engine.
    let r = post(&e, &admin, "/policy/rules/remove", "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(!engine.global_policy().rule_scores.contains_key("SA_LEVEE_LOCAL_TEST"));
    assert_ne!(engine.sa_rules().unwrap().dirs.last(), Some(&local));
}

#[test]
fn rule_uploads_take_only_plain_cf_files() {
    let one = rules::unpack(b"body X /x/\n", "C:\\rules\\my-local_1.cf").unwrap();
    assert_eq!(one[0].0, "my-local_1.cf");
    assert!(rules::unpack(b"body X /x/\n", ".hidden.cf").is_err());
    assert!(rules::unpack(b"body X /x/\n", "notes.txt").is_err());
    assert!(rules::unpack(&rules_tarball(&[("/etc/x.cf", Some("x"))]), "").is_err());
    assert!(rules::unpack(&rules_tarball(&[("a b.cf", Some("x"))]), "").is_err());
    let two = rules_tarball(&[("a/x.cf", Some("1")), ("b/x.cf", Some("2"))]);
    assert!(rules::unpack(&two, "").unwrap_err().contains("two files"));
    assert!(rules::unpack(&rules_tarball(&[("README", Some("x"))]), "").is_err());
    let big = "#".repeat(rules::MAX_BYTES + 1);
    assert!(rules::unpack(&rules_tarball(&[("big.cf", Some(&big))]), "").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_config_edits_all_land_and_leave_no_temp_files() {
    let e = env();
    let before: std::collections::BTreeSet<_> =
        std::fs::read_dir(&e.dir).unwrap().map(|d| d.unwrap().file_name()).collect();
    // Each edit reads, rewrites and fsyncs the file: without one lock across that, an
    // edit that read before the other's write drops the other's change.
    const EACH: usize = 12;
    let mut tasks = tokio::task::JoinSet::new();
    let st = e.state.clone();
    tasks.spawn_blocking(move || {
        for i in 0..EACH {
            let sym = format!("TEST_SYM_{i}");
            pages::edit_config(&st, |doc| config_edit::set_weight(doc, &sym, Some(1.5))).unwrap();
        }
    });
    let st = e.state.clone();
    tasks.spawn_blocking(move || {
        for i in 0..EACH {
            let d = config_edit::DomainEdit {
                name: format!("d{i}.example.test"),
                downstream: "127.0.0.1:9".into(),
                tls: "none".into(),
                enabled: true,
            };
            pages::edit_config(&st, |doc| config_edit::upsert_domain(doc, &d)).unwrap();
        }
    });
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let path = e.state.engine().config_path().unwrap().to_path_buf();
    let c = levee_config::Config::parse(&std::fs::read_to_string(&path).unwrap(), "t").unwrap();
    assert_eq!(c.policy.weights.len(), EACH, "{:?}", c.policy.weights);
    assert_eq!(c.domains.len(), EACH + 1);
    // The running config is the last one written.
    let running = e.state.engine().config();
    assert_eq!((running.policy.weights.len(), running.domains.len()), (EACH, EACH + 1));
    let after: std::collections::BTreeSet<_> =
        std::fs::read_dir(&e.dir).unwrap().map(|d| d.unwrap().file_name()).collect();
    assert_eq!(after, before, "no temp file is left beside the config");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn parallel_wrong_logins_each_count_and_lock_out() {
    let e = Arc::new(env());
    add_user(&e, "admin", Role::Admin, &[]);
    // Run wrong logins for admin from `ip` at once; the statuses they got.
    async fn guesses(e: &Arc<Env>, ip: &'static str, n: u32) -> Vec<StatusCode> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let e = e.clone();
            tasks.spawn(async move { try_login(&e, "admin", "wrong password!", ip).await.status });
        }
        let mut out = Vec::new();
        while let Some(s) = tasks.join_next().await {
            out.push(s.unwrap());
        }
        out
    }
    let failures = |key: String| e.state.store().throttle_get(&key).unwrap().failures;

    // Every guess waits on the hash at the same time; each still counts.
    let ip = "198.51.100.40";
    let got = guesses(&e, ip, auth::PAIR_LIMIT).await;
    assert!(got.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{got:?}");
    assert_eq!(failures(auth::pair_key("admin", ip.parse().unwrap())), auth::PAIR_LIMIT);
    assert_eq!(failures(auth::source_throttle_key(ip.parse().unwrap())), auth::PAIR_LIMIT);
    assert_eq!(try_login(&e, "admin", PASSWORD, ip).await.status, StatusCode::TOO_MANY_REQUESTS);

    // More at once than the limit: only the limit's worth reach the password check.
    let ip = "198.51.100.41";
    let got = guesses(&e, ip, auth::PAIR_LIMIT + 3).await;
    let checked = got.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let refused = got.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((checked, refused), (auth::PAIR_LIMIT as usize, 3), "{got:?}");
    assert_eq!(failures(auth::pair_key("admin", ip.parse().unwrap())), auth::PAIR_LIMIT);
    assert_eq!(try_login(&e, "admin", PASSWORD, ip).await.status, StatusCode::TOO_MANY_REQUESTS);

    // A success takes back its own count from the source.
    let ip = "198.51.100.42";
    assert_eq!(try_login(&e, "admin", PASSWORD, ip).await.status, StatusCode::SEE_OTHER);
    assert_eq!(failures(auth::source_throttle_key(ip.parse().unwrap())), 0);
}

fn logged(n: u64, received_at: u64, action: &str, from: &str) -> levee_store::LogEntry {
    levee_store::LogEntry {
        id: QueueId::from_u64(n),
        received_at,
        client_ip: "192.0.2.1".into(),
        helo: "mx.sender.test".into(),
        mail_from: from.into(),
        rcpt_to: vec!["Bob@example.test".into()],
        size: 10,
        action: action.into(),
        score: 5.0,
        findings: vec![
            ("SA_X".into(), String::new(), 2.0),
            ("SPF_PASS".into(), String::new(), -1.0),
        ],
        deliveries: vec![],
    }
}

#[test]
fn metrics_and_statistics_read_the_counters() {
    let e = env();
    let store = e.state.store();
    let t = now();
    store.log_put(&logged(1, t - 2 * 86_400, "tag", "old@sender.test")).unwrap();
    store.log_put(&logged(2, t - 7_200, "tag", "")).unwrap();
    store.log_put(&logged(3, t - 60, "tag", "Alice@Sender.test")).unwrap();
    store.log_put(&logged(4, t, "reject", "alice@sender.test")).unwrap();
    // Taken back: counted as a tempfail from now on.
    store.log_put(&logged(4, t, "tempfail", "alice@sender.test")).unwrap();

    let m = api::metrics_text(&e.state).unwrap();
    for line in [
        "levee_messages_24h{verdict=\"tag\"} 2",
        "levee_messages_24h{verdict=\"reject\"} 0",
        "levee_messages_24h{verdict=\"tempfail\"} 1",
        "levee_messages_total{verdict=\"tag\"} 3",
        "levee_messages_total{verdict=\"reject\"} 1",
        "levee_messages_total{verdict=\"tempfail\"} 1",
        "# TYPE levee_messages_total counter",
        "levee_log_messages 4",
        "levee_quarantine_messages 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing from\n{m}");
    }

    let s = stats::stats(&e.state, 24).unwrap();
    assert_eq!(s.total.get("tag"), Some(&2));
    assert_eq!(s.per_hour.iter().map(|p| p.2.iter().sum::<u64>()).sum::<u64>(), 3);
    assert_eq!(s.per_hour.iter().find(|p| p.0 == "tempfail").unwrap().2[23], 1);
    assert_eq!(s.senders, [("alice@sender.test".to_string(), 2), ("<>".to_string(), 1)]);
    assert_eq!(s.recipients, [("bob@example.test".to_string(), 3)]);
    assert_eq!(s.reasons, [("SA_X".to_string(), 3)]);
    // A week reaches the old record too.
    assert_eq!(stats::stats(&e.state, 24 * 7).unwrap().total.get("tag"), Some(&3));
}

/// Not a test: prints how long `/metrics` takes to render over a log of 100,000 records
/// received in the last day (every record inside the 24-hour window, the worst case).
/// `cargo test -p levee-console metrics_latency -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run by hand"]
fn metrics_latency_with_100k_log_records() {
    const RECORDS: u64 = 100_000;
    let e = env();
    let store = e.state.store();
    let t = now();
    let actions = ["accept", "tag", "quarantine", "reject", "tempfail"];
    let fill = std::time::Instant::now();
    for i in 0..RECORDS {
        store
            .log_put(&levee_store::LogEntry {
                id: QueueId::from_u64(i + 1),
                received_at: t - 86_000 + i * 86_000 / RECORDS,
                client_ip: "192.0.2.1".into(),
                helo: "mx.sender.test".into(),
                mail_from: format!("s{}@sender{}.test", i % 1_000, i % 37),
                rcpt_to: vec![format!("u{}@example.test", i % 50)],
                size: 5_000,
                action: actions[(i % 5) as usize].into(),
                score: 3.5,
                findings: vec![
                    ("BAYES_50".into(), "0.5".into(), 0.8),
                    (format!("SA_RULE_{}", i % 200), String::new(), 1.2),
                ],
                deliveries: vec![],
            })
            .unwrap();
    }
    println!("{RECORDS} log_put calls: {:?}", fill.elapsed());
    let mut times: Vec<std::time::Duration> = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            let text = api::metrics_text(&e.state).unwrap();
            let took = start.elapsed();
            assert!(text.contains("levee_log_messages 100000"), "{text}");
            took
        })
        .collect();
    times.sort();
    println!(
        "/metrics over {RECORDS} log records: median {:?}, min {:?}, max {:?} (5 renders)",
        times[2], times[0], times[4]
    );
}

/// Issue 12: the API accepted parameters its own document forbids (`limit=1001`) and
/// answered statuses it did not list. Every operation of the document is called without
/// credentials, as each role, and with the parameters and bodies it forbids; every status
/// that comes back must be one the document lists for that operation.
#[tokio::test]
async fn the_api_answers_only_what_its_document_says() {
    let e = env();
    let spec: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    let mut tokens = vec![(String::new(), "anonymous")];
    for (n, (name, role)) in [
        ("admin", Role::Admin),
        ("qm", Role::QuarantineManager),
        ("aud", Role::Auditor),
        ("user", Role::User),
    ]
    .into_iter()
    .enumerate()
    {
        add_user(&e, name, role, &["bob@example.test"]);
        let token = format!("{n}").repeat(40);
        e.state.store().token_add(&auth::digest(&token), name, "test", 1).unwrap();
        tokens.push((format!("Bearer {token}"), name));
    }
    let bad_queries = [
        "",
        "?limit=1001",
        "?limit=0",
        "?limit=abc",
        "?before=xyz",
        "?since=yesterday",
        "?min_score=high",
        "?page=-1",
        "?label=maybe",
    ];
    let bodies = [("", "application/json"), ("{", "application/json"), ("x", "text/plain")];
    let mut seen = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let listed: Vec<&str> =
                op["responses"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
            let concrete = path.replace("{id}", "zzz").replace("{action}", "bogus");
            for (auth, who) in &tokens {
                for q in bad_queries {
                    for (body, ctype) in if method == "post" { &bodies[..] } else { &bodies[..1] } {
                        let uri = format!("/api/v1{concrete}{q}");
                        let mut headers = vec![("content-type", *ctype)];
                        if !auth.is_empty() {
                            headers.push(("authorization", auth.as_str()));
                        }
                        let r =
                            send(&e, &method.to_uppercase(), &uri, "", body, &headers, "192.0.2.1")
                                .await;
                        let code = r.status.as_u16().to_string();
                        assert!(
                            listed.contains(&code.as_str()),
                            "{method} {uri} as {who} answered {code}, not in {listed:?}: {}",
                            r.body
                        );
                        if r.status != StatusCode::OK {
                            let err: serde_json::Value = serde_json::from_str(&r.body)
                                .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {}", r.body));
                            assert!(err["error"].is_string(), "{method} {uri}: {}", r.body);
                        }
                        seen += 1;
                    }
                }
            }
        }
    }
    assert!(seen > 400, "{seen}");
    let admin = &tokens[1].0;
    for q in ["limit=1001", "limit=0", "before=xyz"] {
        let r = send(
            &e,
            "GET",
            &format!("/api/v1/log?{q}"),
            "",
            "",
            &[("authorization", admin)],
            "192.0.2.1",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.body);
    }
    let r =
        send(&e, "GET", "/api/v1/log?limit=1000", "", "", &[("authorization", admin)], "192.0.2.1")
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
