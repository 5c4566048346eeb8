"""Draws assets/icons/textok-studio.png (256x256): a picture on the left turning into a short
column of tokens on the right, the app's idea in one glyph. Run: python3 assets/icons/make_icon.py"""
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
icon = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
draw = ImageDraw.Draw(icon)
draw.rounded_rectangle([8, 8, SIZE - 8, SIZE - 8], radius=48, fill=(28, 33, 48, 255))
# The picture: sky, sun and a hill, cut to a rounded frame.
picture = Image.new("RGBA", (104, 144), (96, 156, 230, 255))
scene = ImageDraw.Draw(picture)
scene.ellipse([20, 20, 60, 60], fill=(255, 206, 84, 255))
scene.ellipse([-30, 86, 130, 220], fill=(86, 184, 108, 255))
mask = Image.new("L", picture.size, 0)
ImageDraw.Draw(mask).rounded_rectangle([0, 0, 103, 143], radius=12, fill=255)
icon.paste(picture, (32, 56), mask)
draw.rounded_rectangle([32, 56, 136, 200], radius=12, outline=(235, 238, 245, 255), width=5)
# The arrow and the tokens: coarse (wide) to fine (narrow), like the nested budgets.
draw.polygon([(146, 118), (164, 128), (146, 138)], fill=(235, 238, 245, 255))
colours = [(255, 206, 84), (96, 156, 230), (86, 184, 108), (230, 110, 96), (180, 130, 230)]
for i, colour in enumerate(colours):
    top = 56 + i * 30
    draw.rounded_rectangle([176, top, 224 - i * 6, top + 20], radius=5, fill=colour + (255,))
icon.save(Path(__file__).with_name("textok-studio.png"))
