"""Show readers code, not nbdev's bookkeeping: a Sphinx extension for Jupyter Book 1.

nbdev reads `#| export`, `#| default_exp`, `#| hide` and friends at the top of a code cell; a reader
needs none of them. Before MyST-NB parses a notebook, this strips those lines from every code cell,
and turns the ones that mean "not for the page" into the cell tags Jupyter Book understands.
"""
import json

# nbdev directives that hide a whole cell from the documentation
HIDDEN = {'hide', 'default_exp', 'exporti_hide'}


def strip_directives(nb: dict) -> dict:
    "The notebook `nb` with `#|` lines removed from code cells; hidden ones tagged `remove-cell`."
    for cell in nb.get('cells', []):
        if cell.get('cell_type') != 'code': continue
        lines = ''.join(cell.get('source', '')).splitlines(keepends=True)
        directives = [l.strip()[2:].split() for l in lines if l.lstrip().startswith('#|')]
        if not directives: continue
        tags = cell.setdefault('metadata', {}).setdefault('tags', [])
        if any(d and d[0] in HIDDEN for d in directives) and 'remove-cell' not in tags:
            tags.append('remove-cell')
        cell['source'] = ''.join(l for l in lines if not l.lstrip().startswith('#|')).lstrip('\n')
    return nb


def _on_source_read(app, docname, source):
    if str(app.env.doc2path(docname)).endswith('.ipynb'):
        source[0] = json.dumps(strip_directives(json.loads(source[0])))


def setup(app):
    app.connect('source-read', _on_source_read)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
