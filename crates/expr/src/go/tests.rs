//! The Go template language as µTask templates use it: Go's semantics, µTask's data and
//! functions, validation, and the bounds every rendering stays within.

use serde_json::{Value, json};

use super::*;

fn ctx() -> Value {
    json!({
        "input": {"name": "world", "n": 3, "big": 12345678912345_i64, "ratio": 1.5,
                  "items": ["a", "b", "c"], "empty": [], "flag": true, "zero": 0,
                  "nested": {"k": "v", "l": [1, 2]}, "none": null, "dash-key": "dk",
                  "html": "<a href=\"x\">&</a>"},
        "step": {"fetch": {"output": {"id": 42, "list": [{"id": 1}, {"id": 2}]},
                           "metadata": {"HTTPStatus": 200}, "state": "DONE"}},
        "task": {"resolver_username": "bob"},
        "config": {"foo.bar": {"x": "y"}},
        "iterator": {"id": 7},
    })
}

#[track_caller]
fn render(t: &str) -> String {
    render_str(t, &ctx()).unwrap_or_else(|e| panic!("{t}: {}", e.message))
}

#[track_caller]
fn fails(t: &str) -> String {
    match render_str(t, &ctx()) {
        Ok(out) => panic!("{t} rendered {out:?}, expected an error"),
        Err(e) => e.message,
    }
}

#[track_caller]
fn check(cases: &[(&str, &str)]) {
    for (t, want) in cases {
        assert_eq!(render(t), *want, "template: {t}");
    }
}

#[track_caller]
fn check_fails(cases: &[(&str, &str)]) {
    for (t, says) in cases {
        let e = fails(t);
        assert!(e.contains(says), "{t}: {e:?} does not contain {says:?}");
    }
}

#[test]
fn text_fields_and_missing_keys() {
    check(&[
        ("plain text", "plain text"),
        ("", ""),
        ("hello {{ .input.name }}", "hello world"),
        ("{{.input.name}}{{.input.name}}", "worldworld"),
        ("{{ .step.fetch.output.id }}", "42"),
        ("{{ .step.fetch.metadata.HTTPStatus }}", "200"),
        // A missing key and a JSON null print as Go prints no value.
        ("{{ .input.missing }}", "<no value>"),
        ("{{ .input.none }}", "<no value>"),
        ("{{ .nothing }}", "<no value>"),
        // `$` is the root everywhere.
        (
            "{{ with .input }}{{ $.task.resolver_username }}{{ end }}",
            "bob",
        ),
        ("{{ $.input.name }}", "world"),
        ("{{ (.input.nested).k }}", "v"),
        // Reading on through a missing key gives no value, not an error (Go's default
        // `missingkey`); µTask stores `{}` rather than null for absent step data for this.
        ("{{ .input.missing.deeper.still }}", "<no value>"),
        ("{{ $x := .input.missing }}{{ $x.deeper }}", "<no value>"),
    ]);
    check_fails(&[
        // A field of a missing key is a nil interface: Go refuses to read through it.
        // A key holding null is a nil interface: Go refuses to read through it.
        (
            "{{ .input.none.deeper }}",
            "nil pointer evaluating interface {}.deeper",
        ),
        (
            "{{ .input.name.x }}",
            "can't evaluate field x in type interface {}",
        ),
        (
            "{{ .input.items.x }}",
            "can't evaluate field x in type interface {}",
        ),
        (
            "{{ $n := .input.n }}{{ $n.x }}",
            "can't evaluate field x in type json.Number",
        ),
        (
            "{{ .input.nested 1 }}",
            "nested is not a method but has arguments",
        ),
        (
            "{{ .input.nested.k 1 }}",
            "k is not a method but has arguments",
        ),
    ]);
}

#[test]
fn printing_of_each_kind_of_value() {
    check(&[
        ("{{ .input.n }}", "3"),
        // Context numbers are json.Number: printed as written, never in exponent form.
        ("{{ .input.big }}", "12345678912345"),
        ("{{ .input.ratio }}", "1.5"),
        ("{{ .input.flag }}", "true"),
        ("{{ .input.items }}", "[a b c]"),
        ("{{ .input.empty }}", "[]"),
        ("{{ .input.nested }}", "map[k:v l:[1 2]]"),
        ("{{ .step.fetch.output.list }}", "[map[id:1] map[id:2]]"),
        ("{{ list 1 \"a\" nil .input.missing }}", "[1 a <nil> <nil>]"),
        // Constants: ints, floats (Go's %v: shortest, exponent from 1e21 down to 1e-5 and
        // from 1e6 up), characters, booleans, strings.
        ("{{ 42 }}", "42"),
        ("{{ -7 }}", "-7"),
        ("{{ 0x1F }}", "31"),
        ("{{ 0o17 }} {{ 017 }} {{ 0b101 }}", "15 15 5"),
        ("{{ 1_000 }}", "1000"),
        ("{{ 3.0 }}", "3"),
        ("{{ 1.5 }}", "1.5"),
        ("{{ 1e3 }}", "1000"),
        ("{{ 1e6 }}", "1e+06"),
        ("{{ 123456.0 }}", "123456"),
        ("{{ 1234567.0 }}", "1.234567e+06"),
        ("{{ 0.0001 }}", "0.0001"),
        ("{{ 0.00001 }}", "1e-05"),
        ("{{ .5 }}", "0.5"),
        ("{{ 'a' }}", "97"),
        ("{{ '\\n' }}", "10"),
        ("{{ true }} {{ false }}", "true false"),
        ("{{ \"a\\tb\\u00e9\\x41\" }}", "a\tbéA"),
        ("{{ `raw \\n` }}", "raw \\n"),
        // Floats from fromJson print as Go prints float64.
        (
            "{{ (fromJson `{\"a\": 1619464078}`).a }}",
            "1.619464078e+09",
        ),
        ("{{ (fromJson `{\"a\": 2.50}`).a }}", "2.5"),
        (
            "{{ fromJson `[1, \"x\", null, {\"b\": false}]` }}",
            "[1 x <nil> map[b:false]]",
        ),
    ]);
}

#[test]
fn trim_markers_and_comments() {
    check(&[
        ("a  {{- \"b\" -}}  c", "abc"),
        ("a \n\t {{- .input.name }} c", "aworld c"),
        ("a {{ .input.name -}} \n c", "a worldc"),
        ("{{- /* a comment */ -}}  x", "x"),
        ("a{{/* comment */}}b", "ab"),
        ("a {{- /* comment */}} b", "a b"),
        ("{{/* multi\nline */}}ok", "ok"),
        // Without the space, `-3` is a number, not a trim marker.
        ("x {{-3}} y", "x -3 y"),
        ("{{ 3 -}}\n\n  y", "3y"),
    ]);
    check_fails(&[
        ("{{/* unclosed }}", "unclosed comment"),
        ("{{/* c */ .x }}", "comment ends before closing delimiter"),
    ]);
}

#[test]
fn if_else_with_and_truth() {
    check(&[
        ("{{ if .input.flag }}yes{{ end }}", "yes"),
        ("{{ if .input.zero }}yes{{ else }}no{{ end }}", "yes"),
        ("{{ if .input.empty }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if .input.missing }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if \"\" }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if 0 }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if 0.0 }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if dict }}yes{{ else }}no{{ end }}", "no"),
        (
            "{{ if eq .task.resolver_username \"al\" }}a{{ else if eq .task.resolver_username \"bob\" }}b{{ else }}c{{ end }}",
            "b",
        ),
        (
            "{{ if false }}a{{ else if false }}b{{ else if true }}c{{ end }}",
            "c",
        ),
        ("{{ with .input.nested }}{{ .k }}{{ end }}", "v"),
        ("{{ with .input.missing }}x{{ else }}none{{ end }}", "none"),
        (
            "{{ with .input.missing }}x{{ else with .input.name }}{{ . }}{{ end }}",
            "world",
        ),
        (
            "{{ with $x := .input.name }}{{ $x }}{{ . }}{{ end }}",
            "worldworld",
        ),
        ("{{ if $x := .input.n }}{{ $x }}{{ end }}", "3"),
    ]);
}

#[test]
fn range_variables_break_and_continue() {
    check(&[
        ("{{ range .input.items }}{{ . }},{{ end }}", "a,b,c,"),
        (
            "{{ range $i, $v := .input.items }}{{ $i }}={{ $v }} {{ end }}",
            "0=a 1=b 2=c ",
        ),
        ("{{ range $v := .input.items }}{{ $v }}{{ end }}", "abc"),
        // Maps range in key order, the key first.
        (
            "{{ range $k, $v := .input.nested }}{{ $k }}:{{ $v }};{{ end }}",
            "k:v;l:[1 2];",
        ),
        ("{{ range .input.empty }}x{{ else }}empty{{ end }}", "empty"),
        (
            "{{ range .input.missing }}x{{ else }}nothing{{ end }}",
            "nothing",
        ),
        (
            "{{ range .step.fetch.output.list }}{{ .id }}{{ end }}",
            "12",
        ),
        (
            "{{ range .input.items }}{{ if eq . \"b\" }}{{ break }}{{ end }}{{ . }}{{ end }}",
            "a",
        ),
        (
            "{{ range .input.items }}{{ if eq . \"b\" }}{{ continue }}{{ end }}{{ . }}{{ end }}",
            "ac",
        ),
        (
            "{{ range $i, $_ := .input.items }}{{ range $.input.items }}{{ if eq . \"b\" }}{{ break }}{{ end }}{{ $i }}{{ end }}{{ end }}",
            "012",
        ),
        // Go 1.22: range over an integer.
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        ("{{ range $i := 2 }}[{{ $i }}]{{ end }}", "[0][1]"),
        ("{{ range until 3 }}{{ . }}{{ end }}", "012"),
        // Dot inside range is the element; outside it is back.
        (
            "{{ range .input.items }}{{ end }}{{ .input.name }}",
            "world",
        ),
    ]);
    check_fails(&[
        (
            "{{ range .input.name }}{{ end }}",
            "range can't iterate over world",
        ),
        (
            "{{ range .input.n }}{{ end }}",
            "range can't iterate over 3",
        ),
        ("{{ break }}", "{{break}} outside {{range}}"),
        (
            "{{ if true }}{{ continue }}{{ end }}",
            "{{continue}} outside {{range}}",
        ),
        (
            "{{ range $i, $v := 3 }}{{ end }}",
            "can't use 3 to iterate over more than one variable",
        ),
    ]);
}

#[test]
fn variables_scope_and_assignment() {
    check(&[
        ("{{ $x := 1 }}{{ $x }}", "1"),
        ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
        // An assignment inside a block changes the outer variable (Go ≥ 1.11).
        (
            "{{ $x := \"a\" }}{{ if true }}{{ $x = \"b\" }}{{ end }}{{ $x }}",
            "b",
        ),
        (
            "{{ $x := \"a\" }}{{ range .input.items }}{{ $x = . }}{{ end }}{{ $x }}",
            "c",
        ),
        // A declaration inside a block is gone at its end.
        (
            "{{ $x := \"out\" }}{{ if true }}{{ $x := \"in\" }}{{ $x }}{{ end }}{{ $x }}",
            "inout",
        ),
        ("{{ $x := .input }}{{ $x.name }}", "world"),
        (
            "{{ $ }}",
            "map[config:map[foo.bar:map[x:y]] input:map[big:12345678912345 dash-key:dk empty:[] flag:true html:<a href=\"x\">&</a> items:[a b c] n:3 name:world nested:map[k:v l:[1 2]] none:<nil> ratio:1.5 zero:0] iterator:map[id:7] step:map[fetch:map[metadata:map[HTTPStatus:200] output:map[id:42 list:[map[id:1] map[id:2]]] state:DONE]] task:map[resolver_username:bob]]",
        ),
    ]);
    for (t, says) in [
        ("{{ $x }}", "undefined variable \"$x\""),
        ("{{ $x = 1 }}", "undefined variable \"$x\""),
        (
            "{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}",
            "undefined variable \"$y\"",
        ),
        (
            "{{ range $i, $v := .input.items }}{{ end }}{{ $v }}",
            "undefined variable \"$v\"",
        ),
    ] {
        let e = parse(t).unwrap_err();
        assert!(e.message.contains(says), "{t}: {}", e.message);
    }
}

#[test]
fn define_template_and_block() {
    check(&[
        (
            "{{ define \"T\" }}<{{ . }}>{{ end }}{{ template \"T\" .input.name }}",
            "<world>",
        ),
        (
            "{{ template \"T\" 1 }}{{ define \"T\" }}[{{ . }}]{{ end }}",
            "[1]",
        ),
        (
            "{{ define \"T\" }}{{ $ }}{{ end }}{{ template \"T\" \"dollar\" }}",
            "dollar",
        ),
        (
            "{{ define \"T\" }}{{ . }}{{ end }}{{ template \"T\" }}",
            "<no value>",
        ),
        ("{{ block \"B\" .input.n }}b{{ . }}{{ end }}", "b3"),
    ]);
    check_fails(&[("{{ template \"nope\" }}", "template \"nope\" not defined")]);
    // As in Go, one text may not define a name twice (an empty definition aside).
    let e = parse("{{ define \"B\" }}x{{ end }}{{ block \"B\" . }}y{{ end }}").unwrap_err();
    assert!(
        e.message.contains("multiple definition of template \"B\""),
        "{}",
        e.message
    );
    check(&[(
        "{{ define \"B\" }}{{ end }}{{ block \"B\" 1 }}[{{ . }}]{{ end }}",
        "[1]",
    )]);
    let e = parse("{{ if true }}{{ define \"x\" }}{{ end }}{{ end }}").unwrap_err();
    assert!(
        e.message.contains("only allowed at the top level"),
        "{}",
        e.message
    );
}

#[test]
fn pipelines_and_parentheses() {
    check(&[
        ("{{ .input.name | upper }}", "WORLD"),
        ("{{ .input.name | printf \"%s!\" | upper }}", "WORLD!"),
        ("{{ \"a\" | printf \"%s-%s\" \"b\" }}", "b-a"),
        ("{{ printf \"%d\" (len .input.items) }}", "3"),
        ("{{ (len .input.items) }}", "3"),
        ("{{ len (index .step.fetch.output.list 0) }}", "1"),
        ("{{ (index .step.fetch.output.list 1).id }}", "2"),
        ("{{ index .input \"dash-key\" }}", "dk"),
        ("{{ index .input.nested.l 1 }}", "2"),
        ("{{ index .input.items 2 }}", "c"),
        ("{{ index .input \"missing\" }}", "<no value>"),
        ("{{ index .input.name 0 }}", "119"),
        ("{{ index . \"input\" \"nested\" \"k\" }}", "v"),
    ]);
    check_fails(&[
        ("{{ index .input.items 5 }}", "index out of range: 5"),
        ("{{ index .input.missing 0 }}", "index of untyped nil"),
        (
            "{{ index .input.items \"a\" }}",
            "cannot index slice/array with type string",
        ),
        (
            "{{ .input.n | 3 }}",
            "non executable command in pipeline stage 2",
        ),
        ("{{ nil }}", "nil is not a command"),
        ("{{ \"x\" 1 }}", "can't give argument to non-function"),
    ]);
}

#[test]
fn comparisons_follow_gos_builtins() {
    check(&[
        (
            "{{ eq 1 1 }} {{ eq 1 2 }} {{ eq 1 2 3 1 }}",
            "true false true",
        ),
        (
            "{{ ne \"a\" \"b\" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 3 2 }} {{ ge 1 2 }}",
            "true true true true false",
        ),
        ("{{ lt 1.5 2.5 }} {{ lt \"a\" \"b\" }}", "true true"),
        ("{{ eq .input.name \"world\" }}", "true"),
        // json.Number is a string type: it equals the string of its digits.
        ("{{ eq .input.n \"3\" }}", "true"),
        // No value compares unequal to anything but no value, without an error.
        (
            "{{ eq .input.missing \"x\" }} {{ eq .input.missing .input.none }}",
            "false true",
        ),
        ("{{ eq .input.flag true }}", "true"),
        (
            "{{ and 1 0 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 \"x\" }}",
            "0 2  x",
        ),
        (
            "{{ not .input.flag }} {{ not .input.missing }}",
            "false true",
        ),
        // `and` and `or` stop at the deciding value: the failing call is never made.
        ("{{ or true (index .input.items 99) }}", "true"),
        ("{{ and false (index .input.items 99) }}", "false"),
        ("{{ eq (len .input.items) 3 }}", "true"),
        ("{{ eq (add 1 2) 3 }}", "true"),
    ]);
    check_fails(&[
        // An int and a float (and a json.Number and an int) are incompatible, as in Go.
        ("{{ eq 1 1.0 }}", "incompatible types for comparison"),
        ("{{ eq .input.n 3 }}", "incompatible types for comparison"),
        ("{{ lt .input.n 5 }}", "incompatible types for comparison"),
        ("{{ lt true false }}", "invalid type for comparison"),
        ("{{ lt .input.items 1 }}", "invalid type for comparison"),
        ("{{ eq .input.items .input.items }}", "non-comparable type"),
        ("{{ eq 1 }}", "missing argument for comparison"),
    ]);
}

#[test]
fn argument_types_are_checked_like_go() {
    check_fails(&[
        ("{{ upper 3 }}", "expected string; found 3"),
        (
            "{{ upper .input.n }}",
            "wrong type for value; expected string; got json.Number",
        ),
        (
            "{{ repeat (add 1 2) \"x\" }}",
            "wrong type for value; expected int; got int64",
        ),
        ("{{ repeat 1.5 \"x\" }}", "expected integer; found 1.5"),
        (
            "{{ upper .input.missing }}",
            "invalid value; expected string",
        ),
        (
            "{{ upper }}",
            "wrong number of args for upper: want 1 got 0",
        ),
        (
            "{{ upper \"a\" \"b\" }}",
            "wrong number of args for upper: want 1 got 2",
        ),
        ("{{ ternary 1 2 \"x\" }}", "expected bool"),
    ]);
    check(&[
        ("{{ repeat 3.0 \"x\" }}", "xxx"),
        ("{{ repeat (int (add 1 2)) \"x\" }}", "xxx"),
    ]);
}

#[test]
fn builtin_print_functions() {
    check(&[
        ("{{ print \"a\" \"b\" 1 2 \"c\" }}", "ab1 2c"),
        ("{{ print 1 2 }}", "1 2"),
        ("{{ println \"a\" 1 }}", "a 1\n"),
        (
            "{{ printf \"%s=%d %v %q %x %X %o %b %c %U\" \"k\" 42 .input.items \"q\" 255 255 8 5 65 65 }}",
            "k=42 [a b c] \"q\" ff FF 10 101 A U+0041",
        ),
        (
            "{{ printf \"%5d|%-5d|%05d|%+d|% d\" 42 42 42 42 42 }}",
            "   42|42   |00042|+42| 42",
        ),
        (
            "{{ printf \"%.2f|%8.3f|%-8.1f|%e|%.3e|%g|%G\" 3.14159 3.14159 2.5 1234.5678 1234.5678 0.000012 1e21 }}",
            "3.14|   3.142|2.5     |1.234568e+03|1.235e+03|1.2e-05|1E+21",
        ),
        (
            "{{ printf \"%.3s|%5s|%-5s|%t|%v|%%\" \"abcdef\" \"ab\" \"ab\" true nil }}",
            "abc|   ab|ab   |true|<nil>|%",
        ),
        (
            "{{ printf \"%x\" \"hi\" }} {{ printf \"% x\" \"hi\" }}",
            "6869 68 69",
        ),
        (
            "{{ printf \"%v\" 1e21 }}|{{ printf \"%g\" 100000.0 }}|{{ printf \"%6.2f%%\" 12.345 }}|{{ printf \"%x\" -255 }}|{{ printf \"%08.3f\" -3.14159 }}|{{ printf \"%+.1e\" 12345.0 }}",
            "1e+21|100000| 12.35%|-ff|-003.142|+1.2e+04",
        ),
        (
            "{{ printf \"%s\" 3 }}|{{ printf \"%5t\" true }}|{{ printf \"%q\" 'x' }}|{{ printf \"%#x\" 255 }}|{{ printf \"%#o\" 8 }}|{{ printf \"%-8q|\" \"a\" }}|{{ printf \"%.0f\" 2.5 }}|{{ printf \"%.0f\" 3.5 }}",
            "%!s(int=3)| true|'x'|0xff|010|\"a\"     ||2|4",
        ),
        (
            "{{ printf \"%.1f\" (list 1.25 2.0) }}|{{ print nil }}|{{ print .input.missing }}|{{ println }}|{{ toString nil }}|{{ quote .input.n }}|{{ squote nil }}",
            "[1.2 2.0]|<nil>|<nil>|\n|<nil>|\"3\"|",
        ),
        (
            "{{ printf \"%6.2v\" 3.14159 }}|{{ printf \"%d\" true }}|{{ printf \"%s\" nil }}|{{ printf \"%d\" (list 1 2) }}|{{ printf \"%s\" (dict \"a\" 1) }}|{{ printf \"%05s\" \"ab\" }}|{{ printf \"%-05d|\" 3 }}",
            "   3.1|%!d(bool=true)|%!s(<nil>)|[1 2]|map[a:%!s(int=1)]|000ab|3    |",
        ),
        (
            "{{ printf \"%v\" 0.000001 }}|{{ printf \"%v\" 0.00001234 }}|{{ printf \"%v\" 123456789.0 }}|{{ printf \"%.3g\" 1234.5 }}|{{ printf \"%.10g\" 1234.5 }}|{{ printf \"%e\" 0.0 }}|{{ printf \"%G\" 1e-10 }}|{{ printf \"%08.3e\" 1234.5 }}|{{ printf \"%10.4g|\" 123.456789 }}",
            "1e-06|1.234e-05|1.23456789e+08|1.23e+03|1234.5|0.000000e+00|1E-10|1.234e+03|     123.5|",
        ),
        (
            "{{ printf \"%q\" .input.items }}|{{ printf \"%03d\" -5 }}|{{ printf \"%+05d\" 5 }}|{{ print \"a\" 1 \"b\" }}|{{ print (list 1) (list 2) }}",
            "[\"a\" \"b\" \"c\"]|-05|+0005|a1b|[1] [2]",
        ),
        (
            "{{ printf \"%T %T %T %T %T %T\" 1 1.5 \"s\" .input.n .input.items .input.nested }}",
            "int float64 string json.Number []interface {} map[string]interface {}",
        ),
        ("{{ printf \"%d\" \"x\" }}", "%!d(string=x)"),
        ("{{ printf \"%d %d\" 1 }}", "1 %!d(MISSING)"),
        ("{{ printf \"%d\" 1 2 }}", "1%!(EXTRA int=2)"),
        ("{{ printf \"%s\" .input.n }}", "3"),
        ("{{ printf \"%d\" .input.n }}", "%!d(json.Number=3)"),
        ("{{ printf \"%*d\" 4 7 }}", "   7"),
        ("{{ printf \"%[2]s %[1]s\" \"a\" \"b\" }}", "b a"),
        ("{{ printf \"%v\" .input.nested }}", "map[k:v l:[1 2]]"),
        (
            "{{ printf \"%d\" .input.nested.l }}",
            "[%!d(json.Number=1) %!d(json.Number=2)]",
        ),
        ("{{ printf \"%q\" \"a\\\"b\\n\" }}", "\"a\\\"b\\n\""),
        (
            "{{ html .input.html }}",
            "&lt;a href=&#34;x&#34;&gt;&amp;&lt;/a&gt;",
        ),
        (
            "{{ js \"it's <b> & \\\"x\\\" = y\" }}",
            "it\\'s \\u003Cb\\u003E \\u0026 \\\"x\\\" \\u003D y",
        ),
        ("{{ urlquery \"a b&c=d/é\" }}", "a+b%26c%3Dd%2F%C3%A9"),
        (
            "{{ len .input.name }} {{ len .input.nested }} {{ len .input.n }}",
            "5 2 1",
        ),
    ]);
    check_fails(&[
        ("{{ len 3 }}", "len of type int"),
        ("{{ len .input.missing }}", "len of nil pointer"),
        ("{{ call .input.missing }}", "call of nil"),
    ]);
}

#[test]
fn sprig_strings() {
    check(&[
        (
            "{{ trim \"  a b \\n\" }}|{{ trimAll \"$\" \"$5.00$\" }}|{{ trimPrefix \"-\" \"-x-\" }}|{{ trimSuffix \"-\" \"-x-\" }}",
            "a b|5.00|x-|-x",
        ),
        (
            "{{ upper \"abc\" }} {{ lower \"ABC\" }} {{ title \"hello wide world\" }} {{ untitle \"Hello World\" }}",
            "ABC abc Hello Wide World hello world",
        ),
        (
            "{{ swapcase \"Hello\" }} {{ initials \"First Try\" }} {{ nospace \" a b\\tc \" }}",
            "hELLO FT abc",
        ),
        (
            "{{ snakecase \"FirstName\" }} {{ snakecase \"HTTPServer\" }} {{ kebabcase \"FirstName\" }} {{ camelcase \"http_server\" }}",
            "first_name http_server first-name HttpServer",
        ),
        (
            "{{ replace \" \" \"-\" \"a b c\" }}|{{ replace \"\" \"-\" \"ab\" }}",
            "a-b-c|-a-b-",
        ),
        (
            "{{ contains \"cat\" \"catch\" }} {{ hasPrefix \"cat\" \"catch\" }} {{ hasSuffix \"cat\" \"catch\" }}",
            "true true false",
        ),
        ("{{ quote \"a\" 1 nil \"b\\\"\" }}", "\"a\" \"1\" \"b\\\"\""),
        ("{{ squote \"a\" 1 }}", "'a' '1'"),
        (
            "{{ cat \"hello\" \"beautiful\" nil \"world\" 3 }}",
            "hello beautiful world 3",
        ),
        ("{{ indent 2 \"a\\nb\" }}", "  a\n  b"),
        ("{{ nindent 2 \"a\" }}", "\n  a"),
        ("{{ repeat 3 \"ab\" }}", "ababab"),
        (
            "{{ substr 1 3 \"hello\" }}|{{ substr -1 2 \"hello\" }}|{{ substr 2 99 \"hello\" }}",
            "el|he|llo",
        ),
        (
            "{{ trunc 3 \"hello\" }}|{{ trunc -3 \"hello\" }}|{{ trunc 9 \"hi\" }}",
            "hel|llo|hi",
        ),
        (
            "{{ abbrev 5 \"hello world\" }}|{{ abbrev 20 \"hello\" }}|{{ abbrevboth 5 10 \"1234 5678 9123\" }}",
            "he...|hello|...5678...",
        ),
        (
            "{{ plural \"one\" \"many\" 1 }} {{ plural \"one\" \"many\" 2 }}",
            "one many",
        ),
        ("{{ wrap 5 \"aaa bbb ccc\" }}", "aaa\nbbb\nccc"),
        ("{{ wrapWith 5 \"\\t\" \"aaa bbb ccc\" }}", "aaa\tbbb\tccc"),
        (
            "{{ toString 3 }} {{ toString .input.n }} {{ toString .input.items }}",
            "3 3 [a b c]",
        ),
        (
            "{{ split \"$\" \"foo$bar$baz\" }}",
            "map[_0:foo _1:bar _2:baz]",
        ),
        ("{{ (split \"$\" \"foo$bar\")._1 }}", "bar"),
        (
            "{{ splitn \"$\" 2 \"foo$bar$baz\" }}",
            "map[_0:foo _1:bar$baz]",
        ),
        ("{{ splitList \",\" \"a,b,c\" }}", "[a b c]"),
        (
            "{{ join \"-\" .input.items }} {{ join \",\" (list 1 nil 2) }} {{ join \",\" \"x\" }}",
            "a-b-c 1,2 x",
        ),
        ("{{ sortAlpha (list \"c\" \"a\" \"b\") }}", "[a b c]"),
        (
            "{{ regexMatch \"^[a-z]+$\" \"abc\" }} {{ regexMatch \"(\" \"abc\" }}",
            "true false",
        ),
        (
            "{{ regexFind \"[0-9]+\" \"ab12cd34\" }} {{ regexFindAll \"[0-9]\" \"a1b2c3\" 2 }} {{ regexFindAll \"[0-9]\" \"a1b2c3\" -1 }}",
            "12 [1 2] [1 2 3]",
        ),
        (
            "{{ regexReplaceAll \"a(x*)b\" \"-ab-axxb-\" \"${1}W\" }} {{ regexReplaceAllLiteral \"a(x*)b\" \"-ab-\" \"$1\" }}",
            "-W-xxW- -$1-",
        ),
        (
            "{{ regexSplit \"z+\" \"pizza\" -1 }} {{ regexQuoteMeta \"1.5+\" }}",
            "[pi a] 1\\.5\\+",
        ),
        (
            "{{ len (randAlphaNum 8) }} {{ len (randNumeric 4) }} {{ regexMatch \"^[a-zA-Z]{5}$\" (randAlpha 5) }}",
            "8 4 true",
        ),
        ("{{ hello }}", "Hello!"),
        (
            "{{ upper \"straße\" }} {{ title \"ünïcode wörds\" }}",
            "STRAßE Ünïcode Wörds",
        ),
        (
            "{{ trimAll \"ab\" \"abcba\" }}|{{ splitList \"\" \"abc\" }}|{{ splitn \",\" 0 \"a,b\" }}",
            "c|[a b c]|map[]",
        ),
        (
            "{{ title \"hello_world foo-bar o'neil\" }}|{{ camelcase \"hello world\" }}|{{ snakecase \"hello world\" }}|{{ kebabcase \"helloWorld\" }}|{{ swapcase \"HeLLo WoRLD\" }}|{{ snakecase \"ID\" }}|{{ snakecase \"userID2Name\" }}",
            "Hello_world Foo-Bar O'Neil|HelloWorld|hello_world|hello-world|hEllO wOrld|id|user_id2_name",
        ),
        (
            "{{ wrap 10 \"The quick brown fox jumps over\" }}|{{ trunc -10 \"hi\" }}|{{ substr 0 -1 \"hello\" }}",
            "The quick\nbrown fox\njumps over|hi|hello",
        ),
        (
            "{{ cat }}|{{ cat nil }}|{{ quote }}|{{ join \",\" (list) }}|{{ join \",\" nil }}|{{ initials \"hello World foo\" }}|{{ abbrev 3 \"hello\" }}|{{ repeat 0 \"x\" }}|{{ indent 0 \"a\" }}|{{ nindent 0 \"\" }}",
            "|||||hWf|hello||a|\n",
        ),
        (
            "{{ regexReplaceAll \"(?P<first>\\\\w+) (?P<last>\\\\w+)\" \"John Smith\" \"${last} ${first}\" }}|{{ regexFindAll \"a.\" \"abacad\" 0 }}|{{ regexSplit \",\" \"a,b,c\" 2 }}",
            "Smith John|[]|[a b,c]",
        ),
    ]);
    check_fails(&[
        ("{{ fail \"stop here\" }}", "stop here"),
        ("{{ substr 3 1 \"hello\" }}", "slice bounds out of range"),
        ("{{ regexFind \"(\" \"x\" }}", "regexp"),
    ]);
}

#[test]
fn sprig_lists_and_dicts() {
    check(&[
        ("{{ list 1 2 3 }}", "[1 2 3]"),
        (
            "{{ first .input.items }} {{ last .input.items }} {{ rest .input.items }} {{ initial .input.items }}",
            "a c [b c] [a b]",
        ),
        ("{{ first .input.empty }}", "<no value>"),
        (
            "{{ append .input.items \"d\" }} {{ prepend .input.items \"z\" }} {{ .input.items }}",
            "[a b c d] [z a b c] [a b c]",
        ),
        (
            "{{ reverse .input.items }} {{ uniq (list 1 1 2 1) }} {{ without .input.items \"b\" }}",
            "[c b a] [1 2] [a c]",
        ),
        (
            "{{ has \"b\" .input.items }} {{ has \"z\" .input.items }} {{ has 1 nil }}",
            "true false false",
        ),
        ("{{ compact (list 1 \"\" 0 nil \"a\" false) }}", "[1 a]"),
        (
            "{{ slice .input.items 1 }} {{ slice .input.items 1 2 }} {{ slice .input.items }}",
            "[b c] [b] [a b c]",
        ),
        (
            "{{ concat .input.items (list 1) }} {{ chunk 2 (list 1 2 3) }}",
            "[a b c 1] [[1 2] [3]]",
        ),
        (
            "{{ until 3 }} {{ untilStep 1 10 3 }} {{ until -2 }} {{ seq 3 }} {{ seq 2 5 }} {{ seq 5 -1 2 }}",
            "[0 1 2] [1 4 7] [0 -1] 1 2 3 2 3 4 5 5 4 3 2",
        ),
        ("{{ dict \"a\" 1 \"b\" }}", "map[a:1 b:]"),
        (
            "{{ get .input.nested \"k\" }}|{{ get .input.nested \"zz\" }}|{{ hasKey .input.nested \"k\" }}",
            "v||true",
        ),
        (
            "{{ $d := dict \"a\" 1 }}{{ $_ := set $d \"b\" 2 }}{{ $d }}",
            "map[a:1 b:2]",
        ),
        (
            "{{ $d := dict \"a\" 1 \"b\" 2 }}{{ $_ := unset $d \"a\" }}{{ $d }}",
            "map[b:2]",
        ),
        (
            "{{ keys .input.nested }} {{ values (dict \"x\" 1 \"y\" 2) }}",
            "[k l] [1 2]",
        ),
        (
            "{{ pluck \"id\" (index .step.fetch.output.list 0) (index .step.fetch.output.list 1) }}",
            "[1 2]",
        ),
        (
            "{{ pick .input.nested \"k\" }} {{ omit .input.nested \"k\" }}",
            "map[k:v] map[l:[1 2]]",
        ),
        (
            "{{ merge (dict \"a\" 1 \"c\" \"\") (dict \"a\" 2 \"b\" 3 \"c\" 4) }}",
            "map[a:1 b:3 c:4]",
        ),
        (
            "{{ mergeOverwrite (dict \"a\" 1 \"n\" (dict \"x\" 1)) (dict \"a\" 2 \"n\" (dict \"y\" 2)) }}",
            "map[a:2 n:map[x:1 y:2]]",
        ),
        (
            "{{ dig \"nested\" \"k\" \"dflt\" .input }} {{ dig \"nested\" \"zz\" \"dflt\" .input }}",
            "v dflt",
        ),
        (
            "{{ deepEqual (list 1 (dict \"a\" 2)) (list 1 (dict \"a\" 2)) }}",
            "true",
        ),
        (
            "{{ $c := deepCopy .input.nested }}{{ $_ := set $c \"k\" \"w\" }}{{ .input.nested.k }}{{ $c.k }}",
            "vw",
        ),
        (
            "{{ typeOf 1 }} {{ typeOf .input.n }} {{ typeOf (add 1 1) }} {{ kindOf .input.items }} {{ kindIs \"map\" .input }} {{ typeIs \"string\" \"x\" }}",
            "int json.Number int64 slice true true",
        ),
        (
            "{{ default \"d\" .input.missing }} {{ default \"d\" .input.name }} {{ default \"d\" \"\" }} {{ default \"d\" .input.zero }} {{ .input.missing | default \"p\" }}",
            "d world d 0 p",
        ),
        (
            "{{ empty .input.empty }} {{ empty 0 }} {{ empty .input.zero }} {{ empty (dict) }} {{ empty \"x\" }}",
            "true true false true false",
        ),
        (
            "{{ coalesce .input.missing \"\" 0 \"x\" }} {{ all 1 \"a\" }} {{ any 0 \"\" }}",
            "x true false",
        ),
        (
            "{{ ternary \"y\" \"n\" true }} {{ false | ternary \"y\" \"n\" }}",
            "y n",
        ),
        (
            "{{ default 1 }}|{{ empty nil }}|{{ coalesce }}|{{ compact (list) }}|{{ has nil (list nil) }}|{{ without (list 1 2 1) 1 }}|{{ rest (list) }}|{{ initial (list 1) }}|{{ last (list) }}",
            "1|true|<no value>|[]|true|[2]|[]|[]|<no value>",
        ),
        (
            "{{ dict \"a\" }}|{{ dict 1 2 }}|{{ get (dict) \"x\" }}|{{ keys (dict \"b\" 1) (dict \"a\" 2) }}|{{ pick (dict \"a\" 1 \"b\" 2) \"b\" \"c\" }}|{{ hasKey (dict \"a\" nil) \"a\" }}|{{ index (dict \"a\" nil) \"a\" }}|{{ (dict \"a\" nil).a }}",
            "map[a:]|map[1:2]||[b a]|map[b:2]|true|<no value>|<no value>",
        ),
        (
            "{{ $x := list 1 }}{{ $y := append $x 2 }}{{ $x }}{{ $y }}|{{ $m := dict \"a\" 1 }}{{ $n := $m }}{{ $_ := set $n \"b\" 2 }}{{ $m }}|{{ $m := dict \"a\" (dict \"x\" 1) }}{{ $_ := merge $m (dict \"a\" (dict \"y\" 2)) }}{{ $m }}",
            "[1][1 2]|map[a:1 b:2]|map[a:map[x:1 y:2]]",
        ),
    ]);
    check_fails(&[
        ("{{ first .input.missing }}", "Cannot find first on nil"),
        ("{{ first \"abc\" }}", "Cannot find first on type string"),
        (
            "{{ $d := dict }}{{ $_ := set $d \"self\" $d }}",
            "cannot contain itself",
        ),
        (
            "{{ $d := dict }}{{ $_ := set $d \"l\" (list $d) }}",
            "cannot contain itself",
        ),
    ]);
}

#[test]
fn sprig_numbers_and_encodings() {
    check(&[
        (
            "{{ add 1 2 3 }} {{ add .input.n 1 }} {{ add \"4\" 1 }} {{ add \"x\" 1 }} {{ add1 .input.n }}",
            "6 4 5 1 4",
        ),
        (
            "{{ sub 5 7 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ mod 7 2 }} {{ div -7 2 }}",
            "-2 24 3 1 -3",
        ),
        (
            "{{ max 1 5 3 }} {{ min 4 2 8 }} {{ biggest 1 .input.n }}",
            "5 2 3",
        ),
        (
            "{{ addf 0.1 0.2 }} {{ subf 1.5 0.25 }} {{ mulf 1.1 1.1 }} {{ divf 1 4 }} {{ maxf 1 2.5 }} {{ minf 1 2.5 }}",
            "0.3 1.25 1.21 0.25 2.5 1",
        ),
        (
            "{{ round 1.2345 3 }}|{{ round -2.5 0 }}|{{ mul 2 \"3\" }}|{{ add1f 1.5 }}|{{ divf 10 3 }}|{{ mulf 3 0.1 }}|{{ int .input.ratio }}|{{ float64 .input.n }}|{{ int64 .input.big }}|{{ add .input.ratio 1 }}",
            "1.235|-3|6|2.5|3.3333333333333335|0.3|0|3|12345678912345|1",
        ),
        (
            "{{ add }}|{{ add1 \"x\" }}|{{ max 1 }}|{{ min 3 \"2\" }}|{{ floor \"2.7\" }}|{{ ceil .input.ratio }}|{{ float64 \"x\" }}|{{ int \"0x1A\" }}|{{ int \"010\" }}|{{ int true }}|{{ int nil }}|{{ atoi \" 3\" }}|{{ atoi \"+3\" }}",
            "0|1|1|2|2|2|0|26|8|1|0|0|3",
        ),
        (
            "{{ toJson 0.1 }}|{{ toJson 100000000000000000000.0 }}|{{ toJson 123456789.123 }}|{{ toJson -0.000001 }}|{{ toJson 0.0000001234 }}|{{ toJson .input.ratio }}|{{ toJson (list 1.5 \"a\" nil true) }}|{{ toJson \"\\u2028\\t\\u0001\" }}",
            "0.1|100000000000000000000|123456789.123|-0.000001|1.234e-7|1.5|[1.5,\"a\",null,true]|\"\\u2028\\t\\u0001\"",
        ),
        (
            "{{ b32enc \"a\" }}|{{ b32dec \"ME======\" }}|{{ b64enc \"\" }}|{{ adler32sum \"\" }}|{{ base \"\" }}|{{ base \"/\" }}|{{ dir \"a\" }}|{{ dir \"/a/b/\" }}|{{ ext \"a.b.c\" }}|{{ clean \"/../a\" }}|{{ clean \"\" }}",
            "ME======|a||1|.|/|.|/a/b|.c|/a|.",
        ),
        (
            "{{ floor 1.7 }} {{ ceil 1.2 }} {{ round 3.14159 2 }} {{ round 2.5 0 }}",
            "1 2 3.14 3",
        ),
        (
            "{{ int \"42\" }} {{ int 3.9 }} {{ int64 \"0x10\" }} {{ float64 \"1.5\" }} {{ atoi \"12\" }} {{ atoi \"x\" }} {{ int \"3.0\" }}",
            "42 3 16 1.5 12 0 3",
        ),
        ("{{ toDecimal \"0777\" }}", "511"),
        (
            "{{ b64enc \"hello\" }} {{ b64dec \"aGVsbG8=\" }} {{ b64dec \"!!\" }}",
            "aGVsbG8= hello illegal base64 data at input byte 0",
        ),
        (
            "{{ b64RawEnc \"hello\" }} {{ b64RawDec \"aGVsbG8\" }}",
            "aGVsbG8 hello",
        ),
        (
            "{{ b32enc \"hello\" }} {{ b32dec \"NBSWY3DP\" }}",
            "NBSWY3DP hello",
        ),
        (
            "{{ sha1sum \"abc\" }}",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
        (
            "{{ sha256sum \"abc\" }}",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        ("{{ adler32sum \"abc\" }}", "38600999"),
        ("{{ adler32sum \"Wikipedia\" }}", "300286872"),
        (
            "{{ sha512sum \"abc\" }}",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
        (
            "{{ sha1sum \"\" }}|{{ sha256sum \"\" }}",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709|e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("{{ toJson .input.nested }}", "{\"k\":\"v\",\"l\":[1,2]}"),
        (
            "{{ toJson .input.html }}",
            "\"\\u003ca href=\\\"x\\\"\\u003e\\u0026\\u003c/a\\u003e\"",
        ),
        ("{{ toRawJson .input.html }}", "\"<a href=\\\"x\\\">&</a>\""),
        (
            "{{ toPrettyJson (dict \"a\" (list 1) \"b\" (dict)) }}",
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}",
        ),
        (
            "{{ toJson .input.big }} {{ toJson 1.0 }} {{ toJson 1e21 }} {{ toJson (fromJson \"1e-7\") }} {{ toJson .input.missing }}",
            "12345678912345 1 1e+21 1e-7 null",
        ),
        ("{{ (fromJson `{\"a\": {\"b\": [1,2]}}`).a.b }}", "[1 2]"),
        ("{{ fromJson \"not json\" }}", "<no value>"),
        (
            "{{ fromJson \"not json\" | default \"fallback\" }}",
            "fallback",
        ),
        (
            "{{ len (uuidv4) }} {{ len (uuid) }} {{ regexMatch \"^[0-9a-f-]{36}$\" uuidv4 }}",
            "36 36 true",
        ),
        (
            "{{ base \"/a/b.txt\" }} {{ dir \"/a/b.txt\" }} {{ ext \"/a/b.txt\" }} {{ clean \"a//b/../c/.\" }} {{ isAbs \"/x\" }}",
            "b.txt /a .txt a/c true",
        ),
    ]);
    check_fails(&[
        ("{{ div 1 0 }}", "integer divide by zero"),
        ("{{ mustFromJson \"{\" }}", "EOF"),
    ]);
}

#[test]
fn dates() {
    check(&[
        (
            "{{ toDate \"2006-01-02\" \"2017-12-31\" | date \"02/01/2006\" }}",
            "31/12/2017",
        ),
        (
            "{{ date \"2006-01-02T15:04:05Z07:00\" (toDate \"2006-01-02 15:04:05\" \"2021-03-04 05:06:07\") }}",
            "2021-03-04T05:06:07Z",
        ),
        (
            "{{ (toDate \"2006-01-02\" \"2017-12-31\").Unix }} {{ toDate \"2006-01-02\" \"2017-12-31\" | unixEpoch }}",
            "1514678400 1514678400",
        ),
        (
            "{{ (toDate \"2006-01-02\" \"2017-12-31\").Format \"Jan 2, 2006 at 3:04pm (MST)\" }}",
            "Dec 31, 2017 at 12:00am (UTC)",
        ),
        (
            "{{ toDate \"2006-01-02T15:04:05.000-07:00\" \"2020-05-06T07:08:09.123+02:00\" | date \"Monday 2 January 2006 15:04:05.999 -0700\" }}",
            "Wednesday 6 May 2020 05:08:09.123 +0000",
        ),
        (
            "{{ toDate \"2006-01-02\" \"2017-12-31\" | dateModify \"1h30m\" | date \"15:04\" }}",
            "01:30",
        ),
        (
            "{{ toDate \"2006-01-02\" \"2017-12-31\" }}",
            "2017-12-31 00:00:00 +0000 UTC",
        ),
        // Sprig's duration reads a string or an int64: an int constant is zero.
        (
            "{{ duration 3661 }} {{ duration (int64 3661) }} {{ duration \"59\" }} {{ duration \"5400.5\" }}",
            "0s 1h1m1s 59s 0s",
        ),
        (
            "{{ durationRound \"2h10m\" }} {{ durationRound (int64 100000000000000) }} {{ durationRound \"1s\" }} {{ durationRound 5 }}",
            "2h 1d 0s 0s",
        ),
        ("{{ date \"2006\" 0 }}", "1970"),
        (
            "{{ toDate \"2006-01-02\" \"nope\" }}",
            "0001-01-01 00:00:00 +0000 UTC",
        ),
        (
            "{{ regexMatch \"^[0-9]{4}-[0-9]{2}-[0-9]{2}$\" (now | date \"2006-01-02\") }} {{ gt (now.Unix) 1700000000 }}",
            "true true",
        ),
    ]);
    check_fails(&[("{{ mustToDate \"2006-01-02\" \"nope\" }}", "cannot parse")]);
}

#[test]
fn utask_field_and_field_from() {
    let c = json!({"step": {"first": {"output": {"result": {"my-payload": "{\"common-name\":\"utask.example.org\",\"id\":32,\"foo\":{\"bar\":1}}"}}}},
                   "config": {"foo.bar": {"x": "y"}}});
    let r = |t: &str| render_str(t, &c).unwrap_or_else(|e| panic!("{t}: {}", e.message));
    assert_eq!(
        r("{{ field `step` `first` `output` `result` `my-payload` }}"),
        "{\"common-name\":\"utask.example.org\",\"id\":32,\"foo\":{\"bar\":1}}"
    );
    assert_eq!(
        r(
            "{{ field `step` `first` `output` `result` `my-payload` | fromJson | fieldFrom `common-name` }}"
        ),
        "utask.example.org"
    );
    assert_eq!(
        r(
            "{{ field `step` `first` `output` `result` `my-payload` | fromJson | fieldFrom `foo` `bar` }}"
        ),
        "1"
    );
    assert_eq!(
        r("{{ `{\"id\":32}` | fromJson | fieldFrom `invalid` | default `example.org` }}"),
        "example.org"
    );
    assert_eq!(r("{{ field `config` `foo.bar` `x` }}"), "y");
    assert_eq!(r("{{ field `config` `nope` `x` }}"), "<no value>");
    let e = render_str("{{ fieldFrom `a` `notamap` }}", &c).unwrap_err();
    assert!(
        e.message.contains("unable to cast given data to a map"),
        "{}",
        e.message
    );
}

#[test]
fn utask_eval_and_eval_cache() {
    let vars = Variables::new([
        Variable {
            name: "plain".into(),
            value: Some(json!("ok")),
            expression: None,
        },
        Variable {
            name: "templated".into(),
            value: Some(json!("{{ `o` }}k {{ .input.name }}")),
            expression: None,
        },
        Variable {
            name: "number".into(),
            value: Some(json!(12345678912345_i64)),
            expression: None,
        },
        Variable {
            name: "js".into(),
            value: None,
            expression: Some("'{{ .input.name }}'.length".into()),
        },
        Variable {
            name: "loop".into(),
            value: Some(json!("{{ eval `loop` }}")),
            expression: None,
        },
    ]);
    let c = ctx();
    let r = |t: &str, v: &Variables| render_str_with(t, &c, v).map_err(|e| e.message);
    assert_eq!(r("{{ eval `plain` }}", &vars).unwrap(), "ok");
    assert_eq!(r("{{ eval `templated` }}", &vars).unwrap(), "ok world");
    assert_eq!(
        r("/path/{{ eval `number` }}", &vars).unwrap(),
        "/path/12345678912345"
    );
    // JavaScript is someone else's: without an evaluator the error names the variable.
    let e = r("{{ eval `js` }}", &vars).unwrap_err();
    assert!(e.contains("\"js\" is a JavaScript expression"), "{e}");
    let e = r("{{ eval `nope` }}", &vars).unwrap_err();
    assert!(e.contains("Var name not found in template: 'nope'"), "{e}");
    // A variable evaluating itself stops at the nesting bound.
    let e = r("{{ eval `loop` }}", &vars).unwrap_err();
    assert!(e.contains("rendering stopped"), "{e}");

    // With an evaluator: the expression is rendered first, then handed over; evalCache
    // asks once.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let vars = Variables::new([Variable {
        name: "js".into(),
        value: None,
        expression: Some("'{{ .input.name }}'.length".into()),
    }])
    .with_expression_evaluator(move |name, rendered| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(name, "js");
        Ok(format!("{}", rendered.len()))
    });
    assert_eq!(
        r("{{ evalCache `js` }}{{ evalCache `js` }}", &vars).unwrap(),
        "1414"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(r("{{ eval `js` }}", &vars).unwrap(), "14");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The JSON a variable holds can be read back with fromJson.
    let vars = Variables::new([Variable {
        name: "raw".into(),
        value: Some(json!("{\"a\":\"utask\",\"b\":666,\"d\":[\"1\",\"2\"]}")),
        expression: None,
    }]);
    assert_eq!(r("{{ (eval `raw` | fromJson).a }} {{ (eval `raw` | mustFromJson).b }} {{ (eval `raw` | fromJson).d }}", &vars).unwrap(), "utask 666 [1 2]");
}

#[test]
fn refused_and_unknown_functions() {
    for (t, says) in [
        ("{{ nope 1 }}", "function \"nope\" not defined"),
        ("{{ .input.x | nope }}", "function \"nope\" not defined"),
        (
            "{{ env \"HOME\" }}",
            "function \"env\" is not available here",
        ),
        (
            "{{ expandenv \"$HOME\" }}",
            "function \"expandenv\" is not available here",
        ),
        (
            "{{ getHostByName \"x\" }}",
            "function \"getHostByName\" is not available here",
        ),
    ] {
        let e = parse(t).unwrap_err();
        assert!(e.message.contains(says), "{t}: {}", e.message);
    }
}

#[test]
fn syntax_errors_name_their_place() {
    for (t, says) in [
        ("{{ .input.name ", "line 1, column"),
        ("a\nb {{ if }}", "line 2, column 9: missing value for if"),
        ("{{ if true }}x", "has no {{end}}"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ \"unterminated }}", "unterminated quoted string"),
        ("{{ ( .x }}", "unclosed left paren"),
        ("{{ .x ) }}", "unexpected right paren"),
        ("{{ 1x }}", "bad number syntax"),
        ("{{ .a-b }}", "bad character"),
        ("{{ 3 4 }}", "can't give argument"),
        ("{{ printf \"%d\"1 }}", "missing space"),
        ("{{ .x | }}", "missing command after |"),
        ("{{ $x := }}", "missing value for command"),
        ("{{ range $a, $b, $c := .x }}{{ end }}", "expected := or ="),
        (
            "{{ if true }}{{ else }}{{ else }}{{ end }}",
            "expected end; found {{else}}",
        ),
        ("{{ 'ab' }}", "malformed character constant"),
        ("{{ 1i }}", "complex number"),
        ("{{ 99999999999999999999 }}", "integer overflow"),
    ] {
        match parse(t) {
            Ok(_) => {
                let e = render_str(t, &ctx()).unwrap_err();
                assert!(e.message.contains(says), "{t}: {}", e.message);
            }
            Err(e) => assert!(e.message.contains(says), "{t}: {}", e.message),
        }
    }
    let e = render_str("line one\n  {{ index .input.items 9 }}", &ctx()).unwrap_err();
    assert!(
        e.message.starts_with("template error at line 2, column 6:"),
        "{}",
        e.message
    );
}

#[test]
fn render_value_renders_every_string_and_keeps_strings_strings() {
    let config = json!({
        "url": "https://x/{{ .input.name }}/{{ .step.fetch.output.id }}",
        "count": "{{ .input.n }}",
        "as_json": "{{ .step.fetch.output.list | toJson }}",
        "literal": 5,
        "flag": false,
        "none": null,
        "{{ .input.name }}": "keys are not rendered",
        "list": ["{{ .input.name | upper }}", 1, {"deep": "{{ .iterator.id }}"}],
        "untouched": "no template here"
    });
    let out = render_value(&config, &ctx()).unwrap();
    assert_eq!(
        out,
        json!({
            "url": "https://x/world/42",
            "count": "3",
            "as_json": "[{\"id\":1},{\"id\":2}]",
            "literal": 5,
            "flag": false,
            "none": null,
            "{{ .input.name }}": "keys are not rendered",
            "list": ["WORLD", 1, {"deep": "7"}],
            "untouched": "no template here"
        })
    );
    // µTask's foreach reads JSON rendered as text.
    let e = render_value(&json!({"a": "{{ .input.none.x }}"}), &ctx()).unwrap_err();
    assert!(e.message.contains("nil pointer"), "{}", e.message);
    // A multi-line JSON body built by hand stays text, with toJson quoting values.
    let body = json!({"body": "{\n  \"single\": \"{{ .input.name }}\",\n  \"quoted\": {{ .input.html | toJson }}\n}"});
    let out = render_value(&body, &ctx()).unwrap();
    let text = out["body"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap();
    assert_eq!(parsed["quoted"], json!("<a href=\"x\">&</a>"));
}

#[test]
fn field_paths_and_functions_for_validation() {
    let paths = |t: &str| -> Vec<String> { parse(t).unwrap().field_paths().into_iter().collect() };
    assert_eq!(paths("{{ .input.name }}"), ["input.name"]);
    assert_eq!(
        paths("{{ with .input }}{{ .name }}{{ end }}"),
        ["input", "input.name"]
    );
    assert_eq!(paths("{{ $.input.name }}"), ["input.name"]);
    assert_eq!(
        paths("{{ $x := .input }}{{ $x.name }}"),
        ["input", "input.name"]
    );
    assert_eq!(
        paths("{{ field \"config\" \"foo.bar\" }}"),
        ["config.foo.bar"]
    );
    assert_eq!(
        paths("{{ range .step.a.output }}{{ .id }}{{ $.task.id }}{{ end }}"),
        ["step.a.output", "task.id"]
    );
    assert_eq!(paths("{{ if eq .inptu.x \"a\" }}{{ end }}"), ["inptu.x"]);
    assert_eq!(
        paths("{{ .input.x | printf \"%s %s\" .step.y.output }}"),
        ["input.x", "step.y.output"]
    );
    assert_eq!(
        paths("{{ with .input }}{{ else }}{{ .task.id }}{{ end }}"),
        ["input", "task.id"]
    );
    assert_eq!(
        paths("{{ define \"t\" }}{{ .inner }}{{ end }}{{ template \"t\" .input }}"),
        ["input"]
    );
    assert_eq!(paths("{{ (index .input.items 0).x }}"), ["input.items"]);
    assert!(paths("{{ toJson . }}").is_empty());

    let funcs = |t: &str| -> Vec<String> { parse(t).unwrap().functions().into_iter().collect() };
    assert_eq!(
        funcs(
            "{{ if and (eq .a 1) (not .b) }}{{ .c | default \"x\" | upper }}{{ end }}{{ define \"t\" }}{{ len . }}{{ end }}"
        ),
        ["and", "default", "eq", "len", "not", "upper"]
    );
    assert!(function_names().contains(&"regexReplaceAll"));
    assert!(is_function("evalCache") && !is_function("env"));
}

#[test]
fn runaway_templates_stop_by_budget() {
    let c = json!({"input": {"s": "x".repeat(100_000), "l": (0..10_000).collect::<Vec<_>>()}});
    for t in [
        // Nested ranges over big lists.
        "{{ range .input.l }}{{ range $.input.l }}{{ end }}{{ end }}",
        "{{ range until 100000 }}{{ range until 100000 }}{{ end }}{{ end }}",
        "{{ range 1000000000 }}{{ end }}",
        // Growing without bound.
        "{{ repeat 1000000000 \"x\" }}",
        "{{ repeat 100000 .input.s }}",
        "{{ until 1000000000 }}",
        "{{ printf \"%999999999d\" 1 }}",
        "{{ printf \"%.999999999f\" 1.0 }}",
        "{{ indent 999999999 \"a\\nb\" }}",
        "{{ replace \"x\" .input.s .input.s }}",
        "{{ regexReplaceAll \"x\" .input.s .input.s }}",
        "{{ $s := .input.s }}{{ range until 40 }}{{ $s = cat $s $s }}{{ end }}{{ len $s }}",
        "{{ $l := list .input.s }}{{ range until 30 }}{{ $l = concat $l $l }}{{ end }}{{ toJson $l }}",
        "{{ $l := list .input.s }}{{ range until 30 }}{{ $l = concat $l $l }}{{ end }}{{ join \"\" $l }}",
        "{{ $l := list .input.s }}{{ range until 30 }}{{ $l = concat $l $l }}{{ end }}{{ print $l }}",
        "{{ $l := list .input.s }}{{ range until 30 }}{{ $l = concat $l $l }}{{ end }}{{ $l }}",
        "{{ range until 200 }}{{ $.input.s }}{{ end }}",
        "{{ define \"r\" }}{{ template \"r\" . }}{{ end }}{{ template \"r\" . }}",
        "{{ $d := dict }}{{ range until 100000000 }}{{ $_ := set $d (toString .) . }}{{ end }}",
    ] {
        let e = render_str(t, &c).unwrap_err();
        assert!(
            e.message.starts_with("rendering stopped"),
            "{t}: {}",
            e.message
        );
    }
    // Ordinary work on the same input is untouched.
    assert_eq!(
        render_str("{{ len (repeat 10 .input.s) }}", &c).unwrap(),
        "1000000"
    );
    assert_eq!(render_str("{{ len .input.l }}", &c).unwrap(), "10000");
    // Many leaves, each within bounds, too large together.
    let many: Vec<Value> = (0..20).map(|_| json!("{{ repeat 5 .input.s }}")).collect();
    let e = render_value(&Value::Array(many), &c).unwrap_err();
    assert!(e.message.contains("rendering stopped"), "{}", e.message);
    // Deep nesting is refused by the parser, not by the stack.
    let deep = "{{ if true }}".repeat(500) + &"{{ end }}".repeat(500);
    assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    let parens = format!("{{{{ {}1{} }}}}", "(".repeat(500), ")".repeat(500));
    assert!(
        parse(&parens)
            .unwrap_err()
            .message
            .contains("nested deeper")
    );
}

/// Values nested far deeper than the stack would take (built a level per iteration),
/// then dropped, compared, printed and stored: no recursion overflows.
#[test]
fn deeply_nested_values_do_not_overflow_the_stack() {
    let c = json!({});
    for t in [
        "{{ $l := list }}{{ range until 150000 }}{{ $l = list $l }}{{ end }}done",
        "{{ $d := dict }}{{ range until 150000 }}{{ $d = dict \"x\" $d }}{{ end }}done",
        "{{ $l := list }}{{ range until 150000 }}{{ $l = list $l }}{{ end }}{{ has 1 (list $l) }}{{ deepEqual $l $l }}",
        "{{ $l := list }}{{ range until 150000 }}{{ $l = list $l }}{{ end }}{{ $_ := set (dict) \"x\" $l }}",
        "{{ $l := list }}{{ range until 150000 }}{{ $l = list $l }}{{ end }}{{ $l }}",
        "{{ $l := list }}{{ range until 150000 }}{{ $l = list $l }}{{ end }}{{ toJson $l }}",
    ] {
        // On a thread with a small stack, like the runtime's workers.
        let t = t.to_string();
        let c = c.clone();
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || render_str(&t, &c).map_err(|e| e.message))
            .unwrap()
            .join()
            .expect("rendering must not overflow the stack");
        if let Err(e) = outcome {
            assert!(
                e.contains("rendering stopped") || e.contains("cannot contain itself"),
                "{e}"
            );
        }
    }
}

/// The deepest nesting the parser takes, inside templates calling themselves as deep as
/// they may, runs on a small stack.
#[test]
fn deepest_templates_fit_a_small_stack() {
    let nest = 99;
    let body = format!(
        "{}{{{{ template \"r\" . }}}}{}",
        "{{ if true }}{{ with . }}".repeat(nest / 2),
        "{{ end }}{{ end }}".repeat(nest / 2)
    );
    let t = format!("{{{{ define \"r\" }}}}{body}{{{{ end }}}}{{{{ template \"r\" 1 }}}}");
    parse(&t).unwrap();
    // And parentheses as deep as they may be at each call.
    let parens = format!("{}.{}", "(".repeat(95), ")".repeat(95));
    let deep_args = format!(
        "{{{{ define \"p\" }}}}{{{{ template \"p\" {parens} }}}}{{{{ end }}}}{{{{ template \"p\" 1 }}}}"
    );
    let e = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || render_str(&deep_args, &json!({})).unwrap_err().message)
        .unwrap()
        .join()
        .expect("rendering must not overflow the stack");
    assert!(e.contains("rendering stopped"), "{e}");
    let e = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || render_str(&t, &json!({})).unwrap_err().message)
        .unwrap()
        .join()
        .expect("rendering must not overflow the stack");
    assert!(
        e.contains("rendering stopped: templates, evaluations and blocks nested deeper"),
        "{e}"
    );
}

#[test]
fn sprig_semver() {
    check(&[
        ("{{ semver \"1.2.3\" }}", "1.2.3"),
        // Masterminds' loose syntax: a `v` and missing parts are accepted, the original kept.
        (
            "{{ semver \"v1.2\" }}|{{ (semver \"v1.2\").Original }}",
            "1.2.0|v1.2",
        ),
        (
            "{{ $v := semver \"1.2.3-beta.1+build.5\" }}{{ $v.Major }} {{ $v.Minor }} {{ $v.Patch }} {{ $v.Prerelease }} {{ $v.Metadata }} {{ $v.String }}",
            "1 2 3 beta.1 build.5 1.2.3-beta.1+build.5",
        ),
        (
            "{{ typeOf (semver \"1.0.0\") }} {{ typeOf (semver \"1.0.0\").Major }} {{ kindOf (semver \"1.0.0\") }}",
            "*semver.Version uint64 ptr",
        ),
        (
            "{{ (semver \"1.2.3\").Compare (semver \"1.2.4\") }} {{ (semver \"1.2.3\").Compare (semver \"v1.2.3+x\") }} {{ (semver \"2.0.0\").Compare (semver \"1.9.9\") }}",
            "-1 0 1",
        ),
        (
            "{{ (semver \"1.2.3-alpha\").LessThan (semver \"1.2.3\") }} {{ (semver \"1.2.3-alpha.10\").GreaterThan (semver \"1.2.3-alpha.9\") }} {{ (semver \"1.2.3-alpha.beta\").GreaterThan (semver \"1.2.3-alpha.1\") }} {{ (semver \"1.0.0\").Equal (semver \"1.0.0+meta\") }}",
            "true true true true",
        ),
        (
            "{{ (semver \"1.2.3-rc.1\").IncPatch }} {{ (semver \"1.2.3\").IncPatch }} {{ (semver \"1.2.3+m\").IncMinor }} {{ (semver \"1.2.3\").IncMajor }}",
            "1.2.3 1.2.4 1.3.0 2.0.0",
        ),
        (
            "{{ (semver \"1.2.3\").SetPrerelease \"rc.1\" }} {{ (semver \"1.2.3\").SetMetadata \"b7\" }}",
            "1.2.3-rc.1 1.2.3+b7",
        ),
        ("{{ toJson (semver \"1.2\") }}", "\"1.2.0\""),
        (
            "{{ printf \"%v|%s\" (semver \"3\") (semver \"3.1\") }}",
            "3.0.0|3.1.0",
        ),
    ]);
    check_fails(&[
        (
            "{{ semver \"1.2.3.4\" }}",
            "error calling semver: Invalid Semantic Version",
        ),
        ("{{ semver \"01.2.3\" }}", "Invalid Semantic Version"),
        ("{{ semver \"\" }}", "Invalid Semantic Version"),
        ("{{ semver \"1.2.3-01\" }}", "Invalid Semantic Version"),
        (
            "{{ (semver \"1.2.3\").Nope }}",
            "can't evaluate field Nope in type *semver.Version",
        ),
        (
            "{{ (semver \"1.2.3\").SetPrerelease \"a..b\" }}",
            "Invalid Metadata string",
        ),
    ]);
}

#[test]
fn sprig_semver_compare() {
    let cases = [
        (">= 1.2.3", "1.2.3", true),
        (">1.2.3", "1.2.3", false),
        ("<1.2.3", "1.2.2", true),
        ("=1.2.3", "1.2.3", true),
        ("1.2.3", "v1.2.3", true),
        ("!=1.2.3", "1.2.4", true),
        ("!=1.2.3", "1.2.3", false),
        ("!=1.2.3", "1.2.4-beta", true),
        ("^1.2.0", "1.9.9", true),
        ("^1.2.0", "2.0.0", false),
        ("^1.2.0", "1.1.9", false),
        ("^0.2.3", "0.2.9", true),
        ("^0.2.3", "0.3.0", false),
        ("^0.0.3", "0.0.3", true),
        ("^0.0.3", "0.0.4", false),
        ("^0", "0.9.0", true),
        ("^0", "1.0.0", false),
        ("~1.2.3", "1.2.9", true),
        ("~1.2.3", "1.3.0", false),
        ("~1", "1.9.0", true),
        ("~> 2.1", "2.1.5", true),
        ("~> 2.1", "2.2.0", false),
        ("1.2.x", "1.2.7", true),
        ("1.2.x", "1.3.0", false),
        ("1.x", "1.8.0", true),
        ("*", "5.0.0", true),
        (">= 1.2, < 3", "2.5.0", true),
        (">= 1.2, < 3", "3.0.0", false),
        (">= 1.2 < 3", "1.1.0", false),
        ("<1.0 || >=2.0", "1.5.0", false),
        ("<1.0 || >=2.0", "2.1.0", true),
        ("1.1 - 1.3", "1.3.9", true),
        ("1.1 - 1.3", "1.4.0", false),
        ("1.1 - 1.3", "1.0.9", false),
        ("1.2.3 - 2.3.4", "2.3.4", true),
        ("1.2.3 - 2.3.4", "2.3.5", false),
        // Masterminds reads `>1.2` as "a minor above 1.2", and `<=1.2` as "up to 1.2.x".
        (">1.2", "1.2.5", false),
        (">1.2", "1.3.0", true),
        ("<=1.2", "1.2.9", true),
        ("<=1.2", "1.3.0", false),
        // Prereleases satisfy only constraints that name one.
        (">=1.0.0", "1.2.0-beta", false),
        (">=1.0.0-0", "1.2.0-beta", true),
        ("^1.0.0-alpha", "1.0.0-beta", true),
        ("1.2.3, 1.2.4", "1.2.3", false),
    ];
    for (constraint, version, want) in cases {
        let t = format!("{{{{ semverCompare {constraint:?} {version:?} }}}}");
        assert_eq!(render(&t), want.to_string(), "{t}");
    }
    check_fails(&[
        (
            "{{ semverCompare \"nope\" \"1.0.0\" }}",
            "error calling semverCompare: improper constraint: nope",
        ),
        (
            "{{ semverCompare \">1\" \"x\" }}",
            "error calling semverCompare: Invalid Semantic Version",
        ),
    ]);
}

#[test]
fn sprig_url_parse_and_join() {
    check(&[
        (
            "{{ $u := urlParse \"https://user:pa%20ss@Example.com:8080/a%2Fb/c?x=1&y=2#frag%20x\" }}{{ $u.scheme }}|{{ $u.host }}|{{ $u.hostname }}|{{ $u.path }}|{{ $u.query }}|{{ $u.fragment }}|{{ $u.opaque }}|{{ $u.userinfo }}",
            "https|Example.com:8080|Example.com|/a/b/c|x=1&y=2|frag x||user:pa%20ss",
        ),
        (
            "{{ $u := urlParse \"mailto:joe@example.com\" }}{{ $u.scheme }}|{{ $u.opaque }}|{{ $u.path }}|{{ $u.host }}",
            "mailto|joe@example.com||",
        ),
        (
            "{{ $u := urlParse \"example.com/a b\" }}{{ $u.scheme }}|{{ $u.host }}|{{ $u.path }}",
            "||example.com/a b",
        ),
        (
            "{{ $u := urlParse \"HTTP://[::1]:80/\" }}{{ $u.scheme }}|{{ $u.host }}|{{ $u.hostname }}|{{ $u.path }}",
            "http|[::1]:80|::1|/",
        ),
        (
            "{{ toRawJson (urlParse \"http://x\") }}",
            "{\"fragment\":\"\",\"host\":\"x\",\"hostname\":\"x\",\"opaque\":\"\",\"path\":\"\",\"query\":\"\",\"scheme\":\"http\",\"userinfo\":\"\"}",
        ),
        (
            "{{ urlJoin (dict \"scheme\" \"https\" \"host\" \"example.com\" \"path\" \"/a b\" \"query\" \"x=1\" \"fragment\" \"f g\" \"userinfo\" \"u:p\") }}",
            "https://u:p@example.com/a%20b?x=1#f%20g",
        ),
        (
            "{{ urlJoin (dict \"scheme\" \"mailto\" \"opaque\" \"joe@example.com\") }}",
            "mailto:joe@example.com",
        ),
        (
            "{{ urlJoin (dict \"host\" \"example.com\" \"path\" \"a\") }}|{{ urlJoin (dict \"path\" \"a:b\") }}|{{ urlJoin (dict) }}",
            "//example.com/a|./a:b|",
        ),
        (
            "{{ urlJoin (urlParse \"http://x.com/p?q=1#f\") }}",
            "http://x.com/p?q=1#f",
        ),
    ]);
    check_fails(&[
        (
            "{{ urlParse \"http://a b.com/\" }}",
            "error calling urlParse: unable to parse url: parse \"http://a b.com/\": invalid character \" \" in host name",
        ),
        (
            "{{ urlParse \":foo\" }}",
            "unable to parse url: parse \":foo\": missing protocol scheme",
        ),
        ("{{ urlParse \"a%zz\" }}", "invalid URL escape \"%zz\""),
        (
            "{{ urlParse \"http://x:y/\" }}",
            "invalid port \":y\" after host",
        ),
        (
            "{{ urlJoin (dict \"host\" 1) }}",
            "unable to parse host key, must be of type string, but int found",
        ),
    ]);
}

#[test]
fn sprig_aes() {
    // Ciphertexts made with `openssl enc -aes-256-cbc` (PKCS#7 padding) under the key
    // Sprig derives (the password zero-padded to 32 bytes) and IV 00 01 … 0f, written as
    // Sprig writes them: base64 of the IV then the ciphertext.
    check(&[
        (
            "{{ decryptAES \"secretkey\" \"AAECAwQFBgcICQoLDA0OD4aChIkqfhLglmmHSXlA6r0=\" }}",
            "plaintext",
        ),
        (
            "{{ decryptAES \"secretkey\" \"AAECAwQFBgcICQoLDA0OD8MJ6vixzhzIpNrnsN5jTTURs7dj4xyajWnL91w9DGra\" }}",
            "0123456789abcdef",
        ),
        (
            "{{ decryptAES \"secretkey\" \"AAECAwQFBgcICQoLDA0OD3Dp293+ZaOWv0jj9hJiOsE=\" }}",
            "héllo wörld",
        ),
        // A password past 32 bytes is cut; an empty one is all zeros.
        (
            "{{ decryptAES \"0123456789abcdef0123456789abcdefXYZ\" \"AAECAwQFBgcICQoLDA0ODzIE2jSJSNdyfZacLLZu8lc=\" }}",
            "x",
        ),
        (
            "{{ decryptAES \"\" \"AAECAwQFBgcICQoLDA0OD9F+O6upQjMeUUwJedmQRxM=\" }}",
            "nokey",
        ),
        (
            "{{ encryptAES \"k\" \"\" }}|{{ decryptAES \"k\" \"\" }}",
            "|",
        ),
        (
            "{{ \"plaintext\" | encryptAES \"secretkey\" | decryptAES \"secretkey\" }}",
            "plaintext",
        ),
        (
            "{{ \"0123456789abcdef\" | encryptAES \"a much longer password than 32 bytes\" | decryptAES \"a much longer password than 32 bytes\" }}",
            "0123456789abcdef",
        ),
        // IV + one block (9 bytes padded to 16), base64: 44 characters; a fresh IV each time.
        (
            "{{ len (encryptAES \"k\" \"plaintext\") }} {{ len (encryptAES \"k\" \"0123456789abcdef\") }} {{ ne (encryptAES \"k\" \"x\") (encryptAES \"k\" \"x\") }}",
            "44 64 true",
        ),
    ]);
    check_fails(&[
        (
            "{{ decryptAES \"k\" \"!!\" }}",
            "error calling decryptAES: illegal base64 data at input byte 0",
        ),
        (
            "{{ decryptAES \"k\" \"AAAA\" }}",
            "slice bounds out of range",
        ),
        (
            "{{ decryptAES \"k\" \"AAECAwQFBgcICQoLDA0ODwAB\" }}",
            "input not full blocks",
        ),
    ]);
}

#[test]
fn sprig_bcrypt_htpasswd_and_rand_bytes() {
    let hash = render("{{ bcrypt \"secret\" }}");
    assert!(hash.starts_with("$2a$10$") && hash.len() == 60, "{hash}");
    assert!(bcrypt::verify("secret", &hash).unwrap());
    assert!(!bcrypt::verify("other", &hash).unwrap());
    assert_ne!(
        hash,
        render("{{ bcrypt \"secret\" }}"),
        "a fresh salt each time"
    );

    let line = render("{{ htpasswd \"myUser\" \"myPassword\" }}");
    let (user, hash) = line.split_once(':').unwrap();
    assert_eq!(user, "myUser");
    assert!(hash.starts_with("$2a$10$"), "{hash}");
    assert!(bcrypt::verify("myPassword", hash).unwrap());
    check(&[
        (
            "{{ htpasswd \"wrongus:er\" \"x\" }}",
            "invalid username: wrongus:er",
        ),
        (
            "{{ bcrypt (repeat 73 \"a\") }}",
            "failed to encrypt string with bcrypt: bcrypt: password length exceeds 72 bytes",
        ),
        ("{{ randBytes 0 }}", ""),
        // 12 bytes are 16 base64 characters without padding; 13 need padding.
        (
            "{{ regexMatch \"^[A-Za-z0-9+/]{16}$\" (randBytes 12) }} {{ regexMatch \"^[A-Za-z0-9+/]{18}==$\" (randBytes 13) }}",
            "true true",
        ),
        ("{{ ne (randBytes 16) (randBytes 16) }}", "true"),
    ]);
    check_fails(&[("{{ randBytes -1 }}", "len out of range")]);
    // Hashing is paid for from the step budget.
    assert!(fails("{{ range until 30 }}{{ bcrypt \"x\" }}{{ end }}").contains("rendering stopped"));
}

#[test]
fn sprig_derive_password() {
    // The Master Password algorithm's outputs, as Sprig's own tests give them.
    check(&[
        (
            "{{ derivePassword 1 \"long\" \"password\" \"user\" \"example.com\" }}",
            "ZedaFaxcZaso9*",
        ),
        (
            "{{ derivePassword 2 \"long\" \"password\" \"user\" \"example.com\" }}",
            "Fovi2@JifpTupx",
        ),
        (
            "{{ derivePassword 1 \"maximum\" \"password\" \"user\" \"example.com\" }}",
            "pf4zS1LjCg&LjhsZ7T2~",
        ),
        (
            "{{ derivePassword 1 \"pin\" \"password\" \"user\" \"example.com\" }}",
            "6685",
        ),
        (
            "{{ derivePassword 1 \"nope\" \"password\" \"user\" \"example.com\" }}",
            "cannot find password template nope",
        ),
    ]);
    check_fails(&[(
        "{{ derivePassword -1 \"pin\" \"p\" \"u\" \"s\" }}",
        "overflows uint32",
    )]);
}

/// The first PEM block of `pem`: its label and DER.
fn pem_block(pem: &str) -> (String, Vec<u8>) {
    use base64::Engine as _;
    let begin = pem.find("-----BEGIN ").expect("a PEM block");
    let rest = &pem[begin + 11..];
    let label = &rest[..rest.find("-----").unwrap()];
    let body = &rest[label.len() + 5..];
    let end = body.find("-----END ").unwrap();
    let b64: String = body[..end].split_whitespace().collect();
    assert!(
        body[..end].lines().all(|l| l.len() <= 64),
        "64-column lines"
    );
    (
        label.to_string(),
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
}

/// Whether `cert`'s signature verifies with `issuer`'s public key.
fn signed_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    use aws_lc_rs::signature;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let alg: &dyn signature::VerificationAlgorithm = match oid.as_str() {
        "1.2.840.113549.1.1.11" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "1.2.840.10045.4.3.2" => &signature::ECDSA_P256_SHA256_ASN1,
        "1.3.101.112" => &signature::ED25519,
        other => panic!("unexpected signature algorithm {other}"),
    };
    let key = &issuer.public_key().subject_public_key.data;
    signature::UnparsedPublicKey::new(alg, key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

fn parse_cert(pem: &str) -> x509_parser::certificate::X509Certificate<'static> {
    let (label, der) = pem_block(pem);
    assert_eq!(label, "CERTIFICATE");
    let der: &'static [u8] = Box::leak(der.into_boxed_slice());
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    let names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 1, "the subject is the CN alone");
    names[0].clone()
}

#[test]
fn sprig_gen_private_key() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    let rsa = render("{{ genPrivateKey \"rsa\" }}");
    let (label, der) = pem_block(&rsa);
    assert_eq!(label, "RSA PRIVATE KEY");
    assert!(rsa.ends_with("-----END RSA PRIVATE KEY-----\n"));
    let k = aws_lc_rs::rsa::KeyPair::from_der(&der).expect("PKCS#1");
    assert_eq!(
        k.public_modulus_len() * 8,
        4096,
        "Sprig's RSA keys are 4096 bits"
    );

    let ec = render("{{ genPrivateKey \"ecdsa\" }}");
    let (label, der) = pem_block(&ec);
    assert_eq!(label, "EC PRIVATE KEY");
    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
        .expect("SEC 1, P-256");

    let ed = render("{{ genPrivateKey \"ed25519\" }}");
    let (label, der) = pem_block(&ed);
    assert_eq!(label, "PRIVATE KEY");
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).expect("PKCS#8");
    assert_ne!(ed, render("{{ genPrivateKey \"ed25519\" }}"));

    check(&[("{{ genPrivateKey \"nope\" }}", "Unknown type nope")]);
    // DSA is refused when the template is parsed, and when the type comes from data.
    let e = parse("{{ genPrivateKey \"dsa\" }}").unwrap_err();
    assert!(
        e.message
            .contains("\"genPrivateKey\" with \"dsa\" is not available here"),
        "{}",
        e.message
    );
    check_fails(&[(
        "{{ \"dsa\" | genPrivateKey }}",
        "error calling genPrivateKey: DSA keys are not supported here",
    )]);
}

#[test]
fn sprig_certificates() {
    // A CA, a certificate it signs, and a self-signed one, read back with x509-parser.
    let out = render(
        "{{ $ca := genCA \"my-ca\" 365 }}{{ $c := genSignedCert \"srv\" (list \"10.0.0.1\" \"::1\") (list \"a.example\" \"b.example\") 30 $ca }}{{ $s := genSelfSignedCert \"self\" nil (list \"c.example\") 7 }}{{ $ca.Cert }}\x00{{ $ca.Key }}\x00{{ $c.Cert }}\x00{{ $c.Key }}\x00{{ $s.Cert }}\x00{{ $s.Key }}\x00{{ typeOf $ca }}",
    );
    let parts: Vec<&str> = out.split('\0').collect();
    let [ca_cert, ca_key, cert, key, self_cert, self_key, type_name] = parts[..] else {
        panic!("{out}");
    };
    assert_eq!(type_name, "sprig.certificate");
    for k in [ca_key, key, self_key] {
        assert_eq!(pem_block(k).0, "RSA PRIVATE KEY");
    }
    let ca = parse_cert(ca_cert);
    let c = parse_cert(cert);
    let selfc = parse_cert(self_cert);
    assert_eq!(common_name(&ca), "my-ca");
    assert_eq!(common_name(&c), "srv");
    assert_eq!(common_name(&selfc), "self");
    assert!(ca.is_ca());
    assert!(!c.is_ca());
    assert!(signed_by(&ca, &ca), "the CA signs itself");
    assert!(signed_by(&c, &ca), "the CA signs the certificate");
    assert!(!signed_by(&c, &selfc));
    assert!(signed_by(&selfc, &selfc));
    assert_eq!(c.issuer().to_string(), ca.subject().to_string());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.digital_signature() && ku.key_encipherment());
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let sans: Vec<String> = c
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        [
            "DNSName(a.example)",
            "DNSName(b.example)",
            "IPAddress(0a:00:00:01)",
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
        ]
    );
    let days = |cert: &x509_parser::certificate::X509Certificate<'_>| {
        let v = cert.validity();
        (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
    };
    assert_eq!((days(&ca), days(&c), days(&selfc)), (365, 30, 7));
    // The certificate's public key is its key's.
    let (_, der) = pem_block(key);
    let k = aws_lc_rs::rsa::KeyPair::from_der(&der).unwrap();
    use aws_lc_rs::signature::KeyPair as _;
    let spki_key = &c.public_key().subject_public_key.data;
    assert_eq!(k.public_key().as_ref(), &spki_key[..]);
}

#[test]
fn sprig_certificates_with_keys() {
    let out = render(
        "{{ $k := genPrivateKey \"ecdsa\" }}{{ $ca := genCAWithKey \"ec-ca\" 10 $k }}{{ $ek := genPrivateKey \"ed25519\" }}{{ $c := genSignedCertWithKey \"leaf\" nil nil 5 $ca $ek }}{{ $s := genSelfSignedCertWithKey \"me\" nil nil 1 $k }}{{ $k }}\x00{{ $ca.Key }}\x00{{ $ca.Cert }}\x00{{ $c.Cert }}\x00{{ $c.Key }}\x00{{ $ek }}\x00{{ $s.Cert }}",
    );
    let parts: Vec<&str> = out.split('\0').collect();
    let [k, ca_key, ca_cert, cert, leaf_key, ek, self_cert] = parts[..] else {
        panic!("{out}");
    };
    assert_eq!(k, ca_key, "the given key is the CA's");
    assert_eq!(leaf_key, ek);
    let ca = parse_cert(ca_cert);
    let c = parse_cert(cert);
    assert!(signed_by(&ca, &ca));
    assert!(signed_by(&c, &ca));
    assert_eq!(common_name(&c), "leaf");
    assert!(signed_by(&parse_cert(self_cert), &parse_cert(self_cert)));

    // A PKCS#8 RSA key comes back as PKCS#1, as Go re-encodes it.
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    use aws_lc_rs::encoding::AsDer as _;
    let pkcs8 = rsa.as_der().unwrap();
    use base64::Engine as _;
    let pkcs8_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let ctx = json!({"k": pkcs8_pem});
    let out = render_str("{{ (genCAWithKey \"r\" 1 .k).Key }}", &ctx).unwrap();
    assert_eq!(pem_block(&out).0, "RSA PRIVATE KEY");

    check_fails(&[
        (
            "{{ genCAWithKey \"x\" 1 \"nothing\" }}",
            "error calling genCAWithKey: parsing private key: no PEM data in input",
        ),
        (
            "{{ genCAWithKey \"x\" 1 \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\" }}",
            "no private key data in PEM block of type CERTIFICATE",
        ),
        (
            "{{ genCAWithKey \"x\" 1 \"-----BEGIN DSA PRIVATE KEY-----\\nAAAA\\n-----END DSA PRIVATE KEY-----\\n\" }}",
            "DSA keys are not supported here",
        ),
        (
            "{{ genSelfSignedCert \"x\" (list \"not-an-ip\") nil 1 }}",
            "error parsing ip: not-an-ip",
        ),
        (
            "{{ genSelfSignedCert \"x\" nil (list 1) 1 }}",
            "error processing alternate dns name: 1 is not a string",
        ),
        (
            "{{ genSignedCert \"x\" nil nil 1 (dict) }}",
            "wrong type for value; expected sprig.certificate",
        ),
    ]);
}

#[test]
fn sprig_build_custom_cert() {
    let out = render(
        "{{ $ca := genCAWithKey \"c\" 1 (genPrivateKey \"ecdsa\") }}{{ $b := buildCustomCert (b64enc $ca.Cert) (b64enc $ca.Key) }}{{ eq $b.Cert $ca.Cert }} {{ eq $b.Key $ca.Key }} {{ typeOf $b }}",
    );
    assert_eq!(out, "true true sprig.certificate");
    check_fails(&[
        (
            "{{ buildCustomCert \"!!\" \"\" }}",
            "error calling buildCustomCert: unable to decode base64 certificate",
        ),
        (
            "{{ buildCustomCert (b64enc \"x\") (b64enc \"y\") }}",
            "unable to decode certificate",
        ),
        (
            "{{ $ca := genCAWithKey \"c\" 1 (genPrivateKey \"ecdsa\") }}{{ buildCustomCert (b64enc $ca.Cert) (b64enc \"nope\") }}",
            "error parsing private key: no PEM data in input",
        ),
    ]);
}
