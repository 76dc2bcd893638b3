"""Code cells at the book's width: 88 columns fit the page's column (see static/minillm.css)."""
from pathlib import Path

STATIC = Path(__file__).parent/'static'


def _add_static(app, config):
    config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect('config-inited', _add_static)
    app.add_css_file('minillm.css')
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
