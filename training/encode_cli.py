"""Encodes a JSON list of strings (stdin) with the Python tokenizer; prints the id lists as JSON."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bpe import Tokenizer  # noqa: E402

tokenizer = Tokenizer(sys.argv[1])
print(json.dumps([tokenizer.encode(s) for s in json.load(sys.stdin)]))
