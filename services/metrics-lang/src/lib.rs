//! The small languages of an analysis template: success and failure conditions (Argo's
//! expressions over `result`), scrape expressions over a Prometheus exposition, and
//! `{{args.NAME}}` templating. The analyzer evaluates them; the delivery config parses them when
//! it is validated, so a typo is refused when the config is applied rather than when a release
//! first measures.

pub mod condition;
pub mod lexer;
pub mod scrape;
pub mod template;
