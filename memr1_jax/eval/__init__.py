"""Evaluation: answer metrics, LLM-as-a-judge, per-category reports.

Import the modules themselves (kept out of this file: `metrics` imports nltk, about a second):
  memr1_jax.eval.metrics  normalize_answer, exact_match, token_f1, bleu1, locomo_f1,
                          locomo_token_f1, locomo_multi_answer_f1, simple_tokenize, bleu_tokenize
  memr1_jax.eval.judge    Judge, JudgeVerdict, HttpJudgeConfig, HttpChatBackend (over memr1_jax.openai_client),
                          generate_fn_backend, judge_messages, parse_judge_output, JudgeHTTPError
  memr1_jax.eval.report   EvalRecord, GroupScores, category_report, render_table,
                          report_to_json, write_report
"""
