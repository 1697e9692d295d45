"""The symbolic update: rewrite a sample's prompt with an LLM, then check the rewrite kept its meaning.

Nothing heavy is imported here: openai, textgrad and transformers load on first use.
"""
