use super::*;

fn routes() -> (Routes, Arc<str>) {
    (Routes::new(RouteConfig::default()), "svc".into())
}

fn t(r: &mut Routes, svc: &Arc<str>, path: &str) -> String {
    r.template(svc, path).template.to_string()
}

#[test]
fn ids_uuids_and_hex_become_placeholders() {
    let (mut r, s) = routes();
    assert_eq!(
        t(&mut r, &s, "/users/42/orders/7"),
        "/users/{id}/orders/{id}"
    );
    assert_eq!(
        t(&mut r, &s, "/o/550e8400-e29b-41d4-a716-446655440000"),
        "/o/{uuid}"
    );
    assert_eq!(t(&mut r, &s, "/blob/deadbeefcafebabe0123"), "/blob/{hex}");
    assert_eq!(t(&mut r, &s, "/v1/status"), "/v1/status");
    assert_eq!(t(&mut r, &s, "/"), "/");
    assert_eq!(t(&mut r, &s, ""), "/");
    assert_eq!(
        t(&mut r, &s, &format!("/x/{}", "z".repeat(100))),
        "/x/{var}"
    );
}

#[test]
fn identifiers_never_become_route_words() {
    let (mut r, s) = routes();
    for (path, want) in [
        ("/users/alice@example.com/orders", "/users/{var}/orders"),
        ("/reset/sk_live_4eC39HqLyjWDarjtT1zdp7dc", "/reset/{var}"),
        ("/cart;jsessionid=0123ABCDEF/items", "/cart/items"),
        ("/login;JSESSIONID=abc", "/login"),
        (
            "/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "/t/{var}",
        ),
        ("/proxy/db.internal:5432/q", "/proxy/{var}/q"),
        ("/files/report.pdf", "/files/report.pdf"),
        ("/files/alice@example.com.pdf", "/files/{var}.pdf"),
        ("/files/.pdf", "/files/{var}"),
        ("/files/report.PDF", "/files/{var}"),
        ("/files/report.exe", "/files/{var}"),
        ("/u/%61lice", "/u/{var}"),
        ("/u/Alice", "/u/{var}"),
        ("/u/user42", "/u/{var}"),
        ("/k/xqzvbnmtrkwpl", "/k/{var}"),
        ("/k/qhkzrtvxwmpl-abcdefghijklmnopqrstu", "/k/{var}"),
        ("/~bob/home", "/{var}/home"),
        ("/a=b/c", "/{var}/c"),
        ("/api/v2/user-profiles/me", "/api/v2/user-profiles/me"),
        ("/health_check/ready", "/health_check/ready"),
    ] {
        assert_eq!(t(&mut r, &s, path), want, "{path}");
    }
}

#[test]
fn static_file_names_stay_when_their_name_is_a_route_word() {
    let (mut r, s) = routes();
    for (path, want) in [
        ("/small.txt", "/small.txt"),
        ("/favicon.ico", "/favicon.ico"),
        ("/index.html", "/index.html"),
        ("/static/app.js", "/static/app.js"),
        ("/fonts/inter-bold.woff2", "/fonts/inter-bold.woff2"),
        ("/api/v2.json", "/api/v2.json"),
        ("/robots.txt;jsessionid=1", "/robots.txt"),
        // The name part still goes through the privacy rules.
        ("/assets/app.3f9a2b1c.js", "/assets/{var}.js"),
        ("/assets/app-3f9a2b1c.css", "/assets/{var}.css"),
        ("/u/12345.png", "/u/{id}.png"),
        ("/b/deadbeefcafebabe0123.map", "/b/{hex}.map"),
        (
            "/d/550e8400-e29b-41d4-a716-446655440000.json",
            "/d/{uuid}.json",
        ),
        ("/k/xqzvbnmtrkwpl.txt", "/k/{var}.txt"),
        ("/u/Alice.jpg", "/u/{var}.jpg"),
        ("/t/sk_live_4eC39HqLyjWDarjtT1zdp7dc.json", "/t/{var}.json"),
        // Not a known extension: a dotted segment stays a placeholder.
        ("/proxy/example.com", "/proxy/{var}"),
        ("/.env", "/{var}"),
    ] {
        assert_eq!(t(&mut r, &s, path), want, "{path}");
    }
    assert!(FILE_EXTENSIONS.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(file_name("a.b.js"), Some(("a.b", "js")));
    assert_eq!(file_name("js"), None);
}

#[test]
fn route_words_are_what_a_route_table_holds() {
    for w in [
        "users",
        "v1",
        "v22",
        "order-items",
        "by_id",
        "rss",
        "x",
        "strength",
    ] {
        assert!(is_route_word(w), "{w}");
    }
    for w in [
        "", "v1234", "Users", "a.b", "a:b", "a@b", "a%20", "a~", "a=b", "x1", "bcdfgh",
    ] {
        assert!(!is_route_word(w), "{w}");
    }
}

#[test]
fn hostile_paths_stay_bounded() {
    let (mut r, s) = routes();
    let deep = "/a".repeat(1000);
    let route = t(&mut r, &s, &deep);
    assert!(route.ends_with("/{rest}"), "{route}");
    assert!(route.len() < 100);
    assert_eq!(t(&mut r, &s, "//a///b"), "/a/b");
}

#[test]
fn many_children_collapse_under_their_parent() {
    let (mut r, s) = routes();
    let word = |i: u8| {
        format!(
            "name-{}{}",
            (b'a' + i / 26) as char,
            (b'a' + i % 26) as char
        )
    };
    for i in 0..100 {
        assert_eq!(
            t(&mut r, &s, &format!("/p/{}", word(i))),
            format!("/p/{}", word(i))
        );
    }
    assert_eq!(t(&mut r, &s, "/p/another"), "/p/{var}");
    // Known children stay as they were.
    assert_eq!(
        t(&mut r, &s, &format!("/p/{}", word(3))),
        format!("/p/{}", word(3))
    );
}

#[test]
fn the_route_cap_sends_the_rest_to_overflow() {
    let mut r = Routes::new(RouteConfig {
        max_routes: 10,
        ..Default::default()
    });
    let s: Arc<str> = "svc".into();
    let mut overflow = 0;
    for a in 0..5 {
        for b in 0..5 {
            let (a, b) = ((b'a' + a) as char, (b'a' + b) as char);
            let route = r.template(&s, &format!("/a{a}/b{b}"));
            if route.overflow {
                assert_eq!(&*route.template, OVERFLOW_ROUTE);
                overflow += 1;
            }
        }
    }
    assert_eq!(r.count("svc"), 10);
    assert_eq!(overflow, 15);
    // Another service has its own budget.
    assert!(!r.template(&"other".into(), "/a0/b0").overflow);
}

#[test]
fn remembered_paths_follow_forgotten_routes() {
    let mut r = Routes::new(RouteConfig {
        max_routes: 1,
        ..Default::default()
    });
    let s: Arc<str> = "svc".into();
    for _ in 0..3 {
        assert_eq!(t(&mut r, &s, "/orders/42"), "/orders/{id}");
        assert!(r.template(&s, "/carts").overflow);
    }
    // A forgotten route frees its place, and the remembered path
    // is templated again rather than answered from memory.
    r.forget("svc", "/orders/{id}");
    assert_eq!(t(&mut r, &s, "/carts"), "/carts");
    assert!(r.template(&s, "/orders/42").overflow);
    r.forget_service("svc");
    assert_eq!(t(&mut r, &s, "/orders/43"), "/orders/{id}");
    // The memory is bounded: distinct paths beyond it start it over.
    for i in 0..MEMO_MAX + 10 {
        r.template(&s, &format!("/orders/{i}"));
    }
    assert!(r.memo.len() <= MEMO_MAX);
}

#[test]
fn user_patterns_take_precedence() {
    let mut r = Routes::new(RouteConfig {
        patterns: vec![
            Pattern::parse("/users/{name}/profile").expect("pattern"),
            Pattern::parse("/static/{*path}").expect("pattern"),
        ],
        ..Default::default()
    });
    let s: Arc<str> = "svc".into();
    assert_eq!(
        t(&mut r, &s, "/users/alice/profile"),
        "/users/{name}/profile"
    );
    assert_eq!(t(&mut r, &s, "/static/css/site.css"), "/static/{*path}");
    assert_eq!(t(&mut r, &s, "/users/alice"), "/users/alice");
    assert!(Pattern::parse("users").is_err());
    assert!(Pattern::parse("/{*a}/b").is_err());
}
