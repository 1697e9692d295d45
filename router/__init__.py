"""Routing: config, graph state, the LangGraph state machine, the run store and the CLI."""
