//! JavaScript for µTask's `variables` with an `expression`: the expression (already rendered
//! as a template) runs in an embedded QuickJS, sandboxed: no module, no I/O (QuickJS has none
//! without its `std`/`os` modules, which are not loaded), a bounded heap and stack, and a
//! time limit after which the evaluation is interrupted. The result is the value's string
//! form, as µTask gives it.

use std::time::{Duration, Instant};

use rquickjs::{CatchResultExt, Coerced, Context, Runtime};

use crate::ExprError;

/// Heap one evaluation may use.
pub const MAX_HEAP_BYTES: usize = 32 << 20;
/// Stack one evaluation may use.
const MAX_STACK_BYTES: usize = 512 << 10;
/// Time an evaluation gets when its variable names none (µTask's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a variable may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Evaluates `source` and returns its result as text (`String(value)`).
pub fn eval(source: &str, timeout: Duration) -> Result<String, ExprError> {
    let err = |m: String| ExprError {
        message: format!("javascript: {m}"),
    };
    let rt = Runtime::new().map_err(|e| err(e.to_string()))?;
    rt.set_memory_limit(MAX_HEAP_BYTES);
    rt.set_max_stack_size(MAX_STACK_BYTES);
    let deadline = Instant::now() + timeout.min(MAX_TIMEOUT);
    rt.set_interrupt_handler(Some(Box::new(move || Instant::now() > deadline)));
    let ctx = Context::full(&rt).map_err(|e| err(e.to_string()))?;
    ctx.with(|ctx| {
        ctx.eval::<Coerced<String>, _>(source)
            .catch(&ctx)
            .map(|v| v.0)
            .map_err(|e| {
                let text = e.to_string();
                if Instant::now() > deadline {
                    err(format!("stopped after {timeout:?}: {text}"))
                } else {
                    err(text)
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_give_their_string_form_and_stay_in_their_box() {
        let t = Duration::from_secs(2);
        assert_eq!(eval("1 + 2 * 3", t).unwrap(), "7");
        assert_eq!(eval("[1, 2].map(x => x * 2).join(',')", t).unwrap(), "2,4");
        assert_eq!(eval("'ok' === 'ok'", t).unwrap(), "true");
        assert_eq!(
            eval("typeof require + typeof fetch + typeof std", t).unwrap(),
            "undefinedundefinedundefined"
        );
        let e = eval("throw new Error('boom')", t).unwrap_err();
        assert!(e.message.contains("boom"), "{e}");
        let e = eval("'x'.repeat(1e9)", t).unwrap_err();
        assert!(e.message.contains("memory"), "{e}");
        let e = eval("function f() { return f() } f()", t).unwrap_err();
        assert!(e.message.contains("stack"), "{e}");
        let start = Instant::now();
        let e = eval("while (true) {}", Duration::from_millis(100)).unwrap_err();
        assert!(e.message.contains("stopped after 100ms"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let e = eval("1 +", t).unwrap_err();
        assert!(e.message.contains("javascript"), "{e}");
    }
}
