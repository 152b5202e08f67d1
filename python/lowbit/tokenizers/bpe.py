"""The BPE model of tokenizer.json: a piece of text -> token ids by merge rank.

A piece starts as one symbol per character (a character missing from the vocabulary
becomes its UTF-8 bytes as ``<0xNN>`` tokens with ``byte_fallback``, else ``unk_token``,
consecutive ones fused into one with ``fuse_unk``); then the adjacent pair with the
lowest merge rank is merged, leftmost first among equal ranks, until no listed pair is
left. With ``ignore_merges`` a piece that is itself a vocabulary token is taken whole.
Results are cached per piece.
"""
import heapq

_CACHE_LIMIT = 200_000
_CACHE_MAX_CHARS = 256


def parse_merges(merges, where="model.merges"):
    """[(left, right)] from merges written as "a b" strings or as [a, b] pairs."""
    if not isinstance(merges, list):
        raise ValueError(f"tokenizer.json: {where} must be a list, got {type(merges).__name__}")
    out = []
    for i, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"tokenizer.json: {where}[{i}] {m!r} is not two tokens separated by one space")
            out.append((parts[0], parts[1]))
        elif isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) for x in m):
            out.append((m[0], m[1]))
        else:
            raise ValueError(f"tokenizer.json: {where}[{i}] must be \"a b\" or [\"a\", \"b\"], got {m!r}")
    return out


class BPE:
    def __init__(self, vocab, merges, unk_token=None, byte_fallback=False, fuse_unk=False, ignore_merges=False):
        self.vocab = vocab
        self.unk_id = None
        if unk_token is not None:
            if unk_token not in vocab:
                raise ValueError(f"tokenizer.json: model.unk_token {unk_token!r} is not in model.vocab")
            self.unk_id = vocab[unk_token]
        self.byte_ids = None
        if byte_fallback:
            self.byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self.fuse_unk = fuse_unk
        self.ignore_merges = ignore_merges
        self.merge_map = {}  # (left id, right id) -> (rank, merged id); a repeated pair keeps its last rank
        results = []
        for rank, (a, b) in enumerate(merges):
            for part in (a, b, a + b):
                if part not in vocab:
                    raise ValueError(f"tokenizer.json: model.merges[{rank}] ({a!r}, {b!r}): {part!r} is not in model.vocab")
            self.merge_map[(vocab[a], vocab[b])] = (rank, vocab[a + b])
            results.append(a + b)
        # Cutting a piece before each "\u2581" changes nothing when that character is a token
        # and no merge result holds it past its first position (a merge across the cut would
        # make such a token). SentencePiece-style vocabularies often qualify; the cut keeps
        # the per-word cache useful for pieces that are whole sentences.
        space = "\u2581"
        self.word_start = space if space in vocab and all(r.find(space, 1) < 0 for r in results) else None
        self.cache = {}

    def _symbols(self, word):
        vocab, ids, in_unk = self.vocab, [], False
        for ch in word:
            t = vocab.get(ch)
            if t is not None:
                ids.append(t)
                in_unk = False
                continue
            if self.byte_ids is not None:
                bs = [self.byte_ids[b] for b in ch.encode("utf-8")]
                if None not in bs:
                    ids.extend(bs)
                    in_unk = False
                    continue
            if self.unk_id is None:
                raise ValueError(f"BPE: character {ch!r} is not in the vocabulary and the model has neither "
                                 "byte_fallback tokens for it nor an unk_token")
            if not (in_unk and self.fuse_unk):
                ids.append(self.unk_id)
            in_unk = True
        return ids

    def _merge(self, ids):
        n = len(ids)
        if n < 2:
            return ids
        mm = self.merge_map
        heap = []
        for i in range(n - 1):
            m = mm.get((ids[i], ids[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))
        if not heap:
            return ids
        heapq.heapify(heap)
        sym = list(ids)  # None once merged into the symbol on its left
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            rank, i, new = pop(heap)
            left = sym[i]
            j = nxt[i]
            if left is None or j >= n:
                continue
            m = mm.get((left, sym[j]))
            if m is None or m[0] != rank:
                continue  # stale: one of the two symbols changed since this entry was made
            sym[i], sym[j] = new, None
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                m = mm.get((new, sym[k]))
                if m is not None:
                    push(heap, (m[0], i, m[1]))
            p = prv[i]
            if p >= 0:
                m = mm.get((sym[p], new))
                if m is not None:
                    push(heap, (m[0], p, m[1]))
        return [s for s in sym if s is not None]

    def _word(self, word):
        got = self.cache.get(word)
        if got is None:
            got = self._merge(self._symbols(word))
            if len(word) <= _CACHE_MAX_CHARS:
                if len(self.cache) >= _CACHE_LIMIT:
                    self.cache.clear()
                self.cache[word] = got
        return got

    def tokenize(self, piece):
        """Token ids of one pre-tokenized piece."""
        if self.ignore_merges:
            t = self.vocab.get(piece)
            if t is not None:
                return [t]
        ws = self.word_start
        if ws is None:
            return list(self._word(piece))
        out, start = [], 0
        while True:
            cut = piece.find(ws, start + 1)
            if cut < 0:
                out.extend(self._word(piece[start:]))
                return out
            out.extend(self._word(piece[start:cut]))
            start = cut
