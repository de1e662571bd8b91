//! integration: lab, chain runner
