"""The user-facing commands (`nslora run`, `eval`, `experiment`, `policy bench`, `export`, ...): the top floor,
over the state machine (router/) and everything below it."""
