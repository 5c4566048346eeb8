"""stdin: a latent cache whose values pack.py wrote as f16; stdout: the same cache with f32
values, the format `train dit` reads. Plain Python (the lent machine may have no numpy)."""
import array, struct, sys

data = sys.stdin.buffer.read()
end = 8 + struct.unpack("<Q", data[:8])[0]
body = data[end:]
values = array.array("f", struct.unpack(f"<{len(body) // 2}e", body))
if sys.byteorder != "little":
    values.byteswap()
sys.stdout.buffer.write(data[:end])
values.tofile(sys.stdout.buffer)
