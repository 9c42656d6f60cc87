#!/usr/bin/env python3
"""What an intruder on the jump host does to the audit file, with Python's hashlib and hmac
(not Passerelle's code): change the records, then recompute every chain value after the change
so that the file verifies on its own.

    tamper.py FILE edit SEQ             the record's path becomes /what-really-happened-is-gone
    tamper.py FILE remove SEQ           the record goes
    tamper.py FILE truncate SEQ         the record and every one after it go
    ... [--key-file KEYFILE]            re-sign with the forward-secure key file's key (its
                                        current epoch, written into each re-signed record)

The file is rewritten in place; records before SEQ are left byte for byte.
"""
import hashlib
import hmac
import re
import sys

path, op, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
key, epoch = None, None
if "--key-file" in sys.argv:
    text = open(sys.argv[sys.argv.index("--key-file") + 1]).read()
    fields = dict(line.split(" ", 1) for line in text.splitlines()[1:])
    key, epoch = bytes.fromhex(fields["key"]), int(fields["epoch"])

lines = open(path, "rb").read().decode().splitlines()
SEQ = re.compile(r'^\{"seq":(\d+),')
CHAIN = ',"chain":"'


def seq_of(line):
    return int(SEQ.match(line).group(1))


at = next(i for i, l in enumerate(lines) if seq_of(l) == seq)
if op == "edit":
    lines[at] = re.sub(r'"path":("[^"]*"|null)', '"path":"/what-really-happened-is-gone"', lines[at], count=1)
elif op == "remove":
    del lines[at]
elif op == "truncate":
    del lines[at:]
else:
    sys.exit(f"unknown operation {op}")

previous = lines[at - 1][lines[at - 1].rindex(CHAIN) + len(CHAIN):-2]
for i in range(at, len(lines)):
    body = lines[i][: lines[i].rindex(CHAIN)] + "}"
    if epoch is not None:
        body = re.sub(r'"key_epoch":\d+', f'"key_epoch":{epoch}', body)
    data = previous.encode() + body.encode()
    value = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
    lines[i] = body[:-1] + CHAIN + value + '"}'
    previous = value
open(path, "w").write("".join(l + "\n" for l in lines))
