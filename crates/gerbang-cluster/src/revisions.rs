//! Configuration revisions (to be written).
