"""Agents: prompts of the Memory Manager, Answer Agent and fact extractor, and output parsers."""

from memr1_jax.agents.extraction import (Extraction, Fact, extract_facts_llm, extract_facts_simple,
                                         simple_fact)
from memr1_jax.agents.parsers import (AnswerParse, FactParse, ManagerParse, parse_answer_output,
                                      parse_fact_list, parse_manager_output)
from memr1_jax.agents.prompts import (ChatMessage, MemoryLike, answer_messages, extraction_messages,
                                      manager_messages, render_plain_text)

__all__ = [
    "AnswerParse", "ChatMessage", "Extraction", "Fact", "FactParse", "ManagerParse", "MemoryLike",
    "answer_messages", "extract_facts_llm", "extract_facts_simple", "extraction_messages",
    "manager_messages", "parse_answer_output", "parse_fact_list", "parse_manager_output",
    "render_plain_text", "simple_fact",
]
