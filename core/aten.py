"""ATen op-name sets that more than one layer reads (the tracer by torch function name, the graph by ATen name)."""

# ops that change only the dtype of their input
CASTS = ("aten.to", "aten._to_copy", "aten.type_as")
# ops that copy their input unchanged
COPIES = ("aten.clone", "aten.contiguous")
# ops whose indices output lies in [0, size of the dim it indexes):
# torch name -> (index of the indices in the output, None for the whole output; dim argument position; default dim,
# None for a flat index)
INDEXING = {"topk": (1, 2, -1), "sort": (1, 1, -1), "argsort": (None, 1, -1), "argmax": (None, 1, None),
            "argmin": (None, 1, None)}
