//! Integration tests: one binary (link time on two cores), one module per area, real servers throughout.

mod support;

mod link;
mod smoke;
mod twemproxy;
