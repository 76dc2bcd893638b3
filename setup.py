"""Packaging for minillm: every setting comes from settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
import setuptools, shlex, shutil
from pathlib import Path
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, f"missing expected setting: {o}"
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
lab_requirements = shlex.split(cfg.get('lab_requirements', ''))  # a learner's: JupyterLab, to run the chapters
lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
lic_str = 'License :: ' + lic[1]


class BuildWithChapters(build_py):
    "Ship the chapter notebooks inside the package: `minillm pipeline` executes them with papermill."
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return  # an editable install reads the repo's nbs/
        dest = Path(self.build_lib)/'minillm'/'nbs'
        dest.mkdir(parents=True, exist_ok=True)
        for nb in sorted(Path('nbs').glob('0[1-7]_*.ipynb')): shutil.copy2(nb, dest/nb.name)

setuptools.setup(
    cmdclass={'build_py': BuildWithChapters},
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title(), lic_str] +
                ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['minillm', 'minillm.*']),
    include_package_data=True,
    package_data={'minillm': ['data/*.xz', 'data/*.json', 'nbs/*.ipynb']},
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'lab': lab_requirements},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']},
    **setup_cfg)
