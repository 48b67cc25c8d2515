//! The setters every op builder shares, written once.
//!
//! Each takes the op by value and returns it; an op is not `Copy`, and every setter is
//! `#[must_use]`, so `op.eps(1e-6);` on its own line is a warning rather than a silent no-op.

/// Setters for the fields of an op struct with lifetime `'a`, each with its doc comment:
/// - `tensor NAME;`: an optional operand, `Option<TensorRef<'a>>`, set from anything that
///   converts into a [`crate::TensorRef`];
/// - `some NAME: T;`: an `Option<T>` field, set to `Some`;
/// - `value NAME: T;`: a plain field.
macro_rules! setters {
    () => {};
    ($(#[$m:meta])* tensor $f:ident; $($rest:tt)*) => {
        $(#[$m])*
        #[must_use = "setters return the changed op; the original is unchanged"]
        pub fn $f(mut self, t: impl Into<$crate::TensorRef<'a>>) -> Self {
            self.$f = Some(t.into());
            self
        }
        setters!($($rest)*);
    };
    ($(#[$m:meta])* some $f:ident: $t:ty; $($rest:tt)*) => {
        $(#[$m])*
        #[must_use = "setters return the changed op; the original is unchanged"]
        pub fn $f(mut self, v: $t) -> Self {
            self.$f = Some(v);
            self
        }
        setters!($($rest)*);
    };
    ($(#[$m:meta])* value $f:ident: $t:ty; $($rest:tt)*) => {
        $(#[$m])*
        #[must_use = "setters return the changed op; the original is unchanged"]
        pub fn $f(mut self, v: $t) -> Self {
            self.$f = v;
            self
        }
        setters!($($rest)*);
    };
}

pub(crate) use setters;
