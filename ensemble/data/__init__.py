"""Data files -> Items and training conversations, and the bundled benchmark.

items     the Item (one question to answer) and LETTERS
rows      raw rows (line, dict) from JSONL, a JSON list or CSV; json_cell
fields    field checks shared by every format (each error names file:line)
formats   item formats (FORMATS: jsonl, csv, nested + the MC layouts), read_items, read_gold
tables    Parquet / Arrow / save_to_disk folders; MMLU-Pro, MMLU, ARC, C-Eval/CMMLU layouts; data.columns
nested    the competition format: one Item per sub-question
chat      training conversations (CHAT_FORMATS: alpaca, sharegpt), read_chat_examples
benchmark the generated benchmark, one module per problem kind
"""
