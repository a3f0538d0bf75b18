use std::collections::BTreeSet;

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

/// The `i`th of 1000 distinct lower-case names that read like words
/// (`kalomi`, `resuta`): what a route table cannot tell from `users`.
fn name(i: usize) -> String {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mi", "re", "su", "ta", "ne", "vi", "do", "pa"];
    let s = |n: usize| SYLLABLES[n % 10];
    format!("{}{}{}", s(i / 100), s(i / 10), s(i))
}

#[test]
fn a_thousand_user_names_give_at_most_max_words_routes_then_var() {
    let (mut r, s) = routes();
    let mut templates = BTreeSet::new();
    for i in 0..1000 {
        let n = name(i);
        assert!(is_route_word(&n) && !is_version(&n), "{n}");
        let want = if i < DEFAULT_MAX_WORDS {
            format!("/users/{n}/orders")
        } else {
            "/users/{var}/orders".to_owned()
        };
        assert_eq!(t(&mut r, &s, &format!("/users/{n}/orders")), want);
        assert!(r.count("svc") <= DEFAULT_MAX_WORDS, "at {i}");
        templates.insert(want);
    }
    assert_eq!(templates.len(), DEFAULT_MAX_WORDS + 1);
    assert_eq!(r.take_collapses(), 1);
    assert_eq!(r.take_collapses(), 0);
    // The ten literal routes left the table with the collapse; their
    // names, remembered paths included, now file under `{var}` too.
    assert_eq!(r.count("svc"), 1);
    assert_eq!(
        t(&mut r, &s, &format!("/users/{}/orders", name(0))),
        "/users/{var}/orders"
    );
    assert_eq!(
        t(&mut r, &s, &format!("/users/{}", name(3))),
        "/users/{var}"
    );
    // Placeholders keep their kind; versions and file names their rules.
    assert_eq!(t(&mut r, &s, "/users/42/orders"), "/users/{id}/orders");
    assert_eq!(t(&mut r, &s, "/users/v2/orders"), "/users/v2/orders");
    assert_eq!(t(&mut r, &s, "/users/avatar.png"), "/users/avatar.png");
    assert_eq!(r.take_collapses(), 0);
}

#[test]
fn a_production_api_keeps_its_vocabulary_and_folds_its_identifiers() {
    let (mut r, s) = routes();
    // Ten resources: exactly the word limit, never a collapse.
    let resources = [
        "orders",
        "carts",
        "items",
        "payments",
        "invoices",
        "customers",
        "search",
        "health",
        "reviews",
        "shipping",
    ];
    assert_eq!(resources.len(), DEFAULT_MAX_WORDS);
    let mut templates = BTreeSet::new();
    for i in 0..6000usize {
        let v = i / 6 % 3 + 1;
        let (path, want) = match i % 6 {
            0 => {
                let res = resources[i / 18 % 10];
                (format!("/api/v{v}/{res}"), format!("/api/v{v}/{res}"))
            }
            1 => (
                format!("/api/v{v}/orders/{i}"),
                format!("/api/v{v}/orders/{{id}}"),
            ),
            2 => (format!("/users/{}", name(i % 1000)), String::new()),
            3 => (
                format!("/users/{}/orders", name(i * 7 % 1000)),
                String::new(),
            ),
            4 => (
                format!(
                    "/static/app.{:08x}.js",
                    i.wrapping_mul(2_654_435_761) as u32
                ),
                "/static/{var}.js".to_owned(),
            ),
            _ => ("/static/app.js".to_owned(), "/static/app.js".to_owned()),
        };
        let got = t(&mut r, &s, &path);
        if !want.is_empty() {
            assert_eq!(got, want, "{path}");
        }
        templates.insert(got);
    }
    let users: Vec<&String> = templates
        .iter()
        .filter(|t| t.starts_with("/users/"))
        .collect();
    // At most ten names ever, each as `/users/NAME` and/or
    // `/users/NAME/orders`, and the two `{var}` routes.
    assert!(users.len() <= 2 * DEFAULT_MAX_WORDS + 2, "{users:?}");
    assert!(templates.contains("/users/{var}") && templates.contains("/users/{var}/orders"));
    assert_eq!(r.take_collapses(), 1);
    // In the table now: 3 versions x (10 resources + orders/{id}), the two
    // static routes and the two user routes.
    assert_eq!(r.count("svc"), 3 * 11 + 2 + 2);
}

#[test]
fn versions_stay_when_their_position_collapses() {
    let (mut r, s) = routes();
    for v in ["v1", "v2", "v3"] {
        assert_eq!(
            t(&mut r, &s, &format!("/api/{v}/health")),
            format!("/api/{v}/health")
        );
    }
    // A scanner's words under /api collapse it, but not the versions.
    for i in 0..=DEFAULT_MAX_WORDS {
        t(&mut r, &s, &format!("/api/{}", name(i)));
    }
    assert_eq!(r.take_collapses(), 1);
    assert_eq!(t(&mut r, &s, "/api/v2/health"), "/api/v2/health");
    assert_eq!(t(&mut r, &s, "/api/v2/orders/7"), "/api/v2/orders/{id}");
    assert_eq!(t(&mut r, &s, &format!("/api/{}", name(0))), "/api/{var}");
    assert_eq!(r.count("svc"), 3 + 2);
}

#[test]
fn root_words_and_file_names_are_kept_up_to_the_child_cap_and_never_folded() {
    let (mut r, s) = routes();
    let max = RouteConfig::default().max_children;
    assert_eq!(
        t(&mut r, &s, "/static/css/site.css"),
        "/static/css/site.css"
    );
    // The root is a service's sections, and what scanners probe: its words
    // never collapse it. Past the cap (`static` is one), new ones are
    // `{var}`.
    for i in 0..max - 1 {
        let n = name(i);
        assert_eq!(t(&mut r, &s, &format!("/{n}")), format!("/{n}"));
    }
    assert_eq!(t(&mut r, &s, &format!("/{}", name(max))), "/{var}");
    assert_eq!(
        t(&mut r, &s, &format!("/{}", name(5))),
        format!("/{}", name(5))
    );
    // File names neither count as words nor collapse their position.
    for i in 0..max {
        let n = name(i);
        assert_eq!(
            t(&mut r, &s, &format!("/static/{n}.js")),
            format!("/static/{n}.js")
        );
    }
    assert_eq!(
        t(&mut r, &s, &format!("/static/{}.js", name(max))),
        "/static/{var}.js"
    );
    assert_eq!(
        t(&mut r, &s, "/static/css/site.css"),
        "/static/css/site.css"
    );
    assert_eq!(r.take_collapses(), 0);
    // Root words and `/{var}`, the file names and `{var}.js`, site.css.
    assert_eq!(r.count("svc"), (max - 1 + 1) + (max + 1) + 1);
}

#[test]
fn a_collapse_retires_every_route_beneath_the_folded_words() {
    let mut r = Routes::new(RouteConfig {
        max_words: 2,
        patterns: vec![Pattern::parse("/u/alice/special").expect("pattern")],
        ..Default::default()
    });
    let s: Arc<str> = "svc".into();
    for path in [
        "/u/alice/orders",
        "/u/alice/orders/7",
        "/u/alice/profile",
        "/u/alice/special",
        "/u/bob/orders",
        "/other/x",
    ] {
        r.template(&s, path);
    }
    assert_eq!(r.count("svc"), 6);
    assert_eq!(t(&mut r, &s, "/u/carol/orders"), "/u/{var}/orders");
    // The pattern's route stays; everything under alice and bob is gone.
    assert_eq!(r.count("svc"), 3);
    assert_eq!(t(&mut r, &s, "/u/alice/special"), "/u/alice/special");
    assert_eq!(t(&mut r, &s, "/u/alice/orders/7"), "/u/{var}/orders/{id}");
    assert_eq!(r.count("svc"), 4);
    // Below `{var}`, positions start over (`orders` is one word there):
    // a collapse there is another, and retires `/u/{var}/orders/...`.
    let n = name(0);
    assert_eq!(
        t(&mut r, &s, &format!("/u/x/{n}")),
        format!("/u/{{var}}/{n}")
    );
    assert_eq!(t(&mut r, &s, "/u/x/y-z"), "/u/{var}/{var}");
    assert_eq!(r.take_collapses(), 2);
    assert_eq!(r.count("svc"), 3);
    assert_eq!(t(&mut r, &s, "/u/bob/orders"), "/u/{var}/{var}");
    // The expiry of a retired route frees nothing twice; a forgotten
    // service starts over.
    r.forget("svc", "/u/alice/orders");
    assert_eq!(r.count("svc"), 3);
    r.forget_service("svc");
    assert_eq!(t(&mut r, &s, "/u/alice/orders"), "/u/alice/orders");
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

#[test]
fn the_tree_stays_consistent_through_collapses_expiry_and_full_tables() {
    let config = RouteConfig {
        max_routes: 20,
        max_words: 3,
        max_children: 4,
        patterns: vec![Pattern::parse("/a/b/{x}").expect("pattern")],
    };
    let mut r = Routes::new(config.clone());
    let s: Arc<str> = "svc".into();
    let pieces = [
        "a", "b", "c", "d", "e", "f", "go", "v1", "v2", "7", "x.js", "y.js", "Z", "b;p=1",
    ];
    // A fixed linear congruential sequence: the same walk on every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 33) as usize % n
    };
    let mut collapses = 0;
    for step in 0..20_000 {
        match next(50) {
            0 => {
                let known: Vec<String> = r.templates("svc").map(str::to_owned).collect();
                if !known.is_empty() {
                    r.forget("svc", &known[next(known.len())]);
                }
            }
            1 if step % 7 == 0 => r.forget_service("svc"),
            _ => {
                let depth = 1 + next(4);
                let path: String = (0..depth)
                    .map(|_| format!("/{}", pieces[next(pieces.len())]))
                    .collect();
                r.template(&s, &path);
            }
        }
        collapses += r.take_collapses();
        if let Some(state) = r.services.get("svc") {
            state.check(&config);
        }
        assert!(r.count("svc") <= 20);
    }
    assert!(collapses > 100, "{collapses} collapses");
}

#[test]
fn route_counts_are_reported_only_when_a_path_is_not_remembered() {
    let (mut r, svc) = routes();
    let (first, counts) = r.template_counted(&svc, "/users/12345");
    assert_eq!((&*first.template, counts), ("/users/{id}", Some((0, 1))));
    // Remembered: nothing to count again.
    assert_eq!(r.template_counted(&svc, "/users/12345").1, None);
    // Another id of the same route: templated again, counts unchanged.
    assert_eq!(r.template_counted(&svc, "/users/777").1, Some((1, 1)));
    assert_eq!(r.template_counted(&svc, "/health").1, Some((1, 2)));
    r.forget(&svc, "/health");
    assert_eq!(r.template_counted(&svc, "/users/12345").1, Some((1, 1)));
}
