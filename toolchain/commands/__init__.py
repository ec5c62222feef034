"""One thin module per command: parse options -> typed config -> one library call -> render."""
