//! Core unit tests live here (see core/tests/).
