"""The Python-side episode runner (`runner`), the ChatPolicy seam to the models (`policy`), and packing of
experiences into fixed-shape update batches (`batching`)."""
