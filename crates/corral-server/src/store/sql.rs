//! Statements built at run time (many rows to one `INSERT`, `IN (…)` lists), with each engine's
//! own placeholders: `$1`, `$2`, … for PostgreSQL (it knows no other), `?` for SQLite. SQLite
//! reads `$N` too — the fixed queries use it, so their text is one for both — but binding a
//! named parameter looks its name up in a list as long as the statement's parameters, so a
//! statement of thousands of `$N` (500 rows × 14 columns) costs time quadratic in their number:
//! it made deploys 40 % slower. sqlx's own `QueryBuilder` writes the placeholders of the
//! database type it is built for, and for the `Any` driver that is always `?`.

use sqlx::any::{Any, AnyArguments};
use sqlx::{Arguments, Encode, Type};

use super::Engine;

/// SQL text with its arguments, a placeholder written as each is bound.
pub(super) struct Statement {
    engine: Engine,
    text: String,
    args: AnyArguments,
    /// The first argument that could not be encoded; the statement is then refused whole.
    error: Option<sqlx::error::BoxDynError>,
}

impl Statement {
    pub(super) fn new(engine: Engine, text: &str) -> Statement {
        Statement {
            engine,
            text: text.to_owned(),
            args: AnyArguments::default(),
            error: None,
        }
    }

    pub(super) fn push(&mut self, text: &str) -> &mut Statement {
        self.text.push_str(text);
        self
    }

    /// Appends the next placeholder and binds `value` to it.
    pub(super) fn bind<'t, T: Encode<'t, Any> + Type<Any>>(&mut self, value: T) -> &mut Statement {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        match self.engine {
            Engine::Sqlite => self.text.push('?'),
            Engine::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.args.len().to_string());
            }
        }
        self
    }

    /// Appends `VALUES (…), (…)`: one tuple per item, its columns bound by `row`.
    pub(super) fn values<I, F>(&mut self, items: I, mut row: F) -> &mut Statement
    where
        I: IntoIterator,
        F: FnMut(&mut Tuple<'_>, I::Item),
    {
        self.text.push_str("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.text.push('(');
            row(
                &mut Tuple {
                    statement: self,
                    first: true,
                },
                item,
            );
            self.text.push(')');
        }
        self
    }

    /// Appends `(v1, v2, …)` for an `IN` list, each value bound.
    pub(super) fn list<'t, T, I>(&mut self, items: I) -> &mut Statement
    where
        I: IntoIterator<Item = T>,
        T: Encode<'t, Any> + Type<Any>,
    {
        self.text.push('(');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(item);
        }
        self.text.push(')');
        self
    }

    /// The statement's text and arguments, or the error of an argument that did not encode.
    pub(super) fn finish(self) -> Result<(String, AnyArguments), sqlx::Error> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok((self.text, self.args)),
        }
    }

    pub(super) fn query<'q>(
        self,
    ) -> Result<sqlx::query::Query<'q, Any, AnyArguments>, sqlx::Error> {
        let (text, args) = self.finish()?;
        Ok(sqlx::query_with(sqlx::AssertSqlSafe(text), args))
    }

    pub(super) fn query_as<'q, O>(
        self,
    ) -> Result<sqlx::query::QueryAs<'q, Any, O, AnyArguments>, sqlx::Error>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let (text, args) = self.finish()?;
        Ok(sqlx::query_as_with(sqlx::AssertSqlSafe(text), args))
    }

    pub(super) fn query_scalar<'q, O>(
        self,
    ) -> Result<sqlx::query::QueryScalar<'q, Any, O, AnyArguments>, sqlx::Error>
    where
        (O,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let (text, args) = self.finish()?;
        Ok(sqlx::query_scalar_with(sqlx::AssertSqlSafe(text), args))
    }
}

/// One row of a `VALUES` list being bound.
pub(super) struct Tuple<'s> {
    statement: &'s mut Statement,
    first: bool,
}

impl Tuple<'_> {
    pub(super) fn bind<'t, T: Encode<'t, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        if !self.first {
            self.statement.text.push_str(", ");
        }
        self.first = false;
        self.statement.bind(value);
        self
    }
}

/// A flag stored as an integer (0 or 1) on both engines, so the two schemas stay alike: SQLite
/// has no boolean type, and a PostgreSQL `BOOLEAN` would read back as another type than
/// SQLite's `INTEGER` through the `Any` driver. Reads a boolean expression's value as well
/// (PostgreSQL's `EXISTS` is boolean, SQLite's an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as Type<Any>>::type_info()
    }
    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        ty.kind().is_integer() || matches!(ty.kind(), sqlx::any::AnyTypeInfoKind::Bool)
    }
}

impl<'q> Encode<'q, Any> for Flag {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as Encode<'q, Any>>::encode_by_ref(&i64::from(self.0), buf)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Flag, sqlx::error::BoxDynError> {
        use sqlx::ValueRef;
        if matches!(value.type_info().kind(), sqlx::any::AnyTypeInfoKind::Bool) {
            return Ok(Flag(<bool as sqlx::Decode<Any>>::decode(value)?));
        }
        match <i64 as sqlx::Decode<Any>>::decode(value)? {
            0 => Ok(Flag(false)),
            1 => Ok(Flag(true)),
            n => Err(format!("a flag is 0 or 1, not {n}").into()),
        }
    }
}
