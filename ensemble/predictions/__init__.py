"""Votes: the predictions long table and the vote matrix.

rows          read / validate prediction rows, build_matrix, load_predictions (one or more inputs)
foreign       several inputs (NAME=PATH): this project's files, lm-eval runs, LLaMA-Factory files
lmeval        lm-evaluation-harness --log_samples output -> rows
llamafactory  LLaMA-Factory generated_predictions.jsonl -> rows
store         the append-only store `vote run` writes (resume)
matrix        VoteMatrix, LabelEncoder, the shared tie rule
"""
