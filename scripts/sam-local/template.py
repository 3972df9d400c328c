"""The built template, as `sam local` must read it to reach the SSM emulator.

    python template.py BUILT_TEMPLATE OUT

Writes OUT: the template `sam build` wrote (.aws-sam/build/template.yaml),
unchanged but for two things:

- every function's CodeUri made absolute (OUT lives elsewhere);
- AWS_ENDPOINT_URL_SSM declared, empty, among Globals' environment
  variables. SAM passes a function only the variables its template declares
  (`--env-vars` can set no other), and the SDK's endpoint override is how the
  functions reach moto instead of AWS. The deployed template does not
  declare it: an empty AWS_ENDPOINT_URL_SSM would be an invalid endpoint for
  the SDK there. Its value comes from `--env-vars`, like
  SSM_PARAMETER_PREFIX's.
"""

import os
import sys

from samcli.yamlhelper import yaml_dump, yaml_parse

ENDPOINT_VAR = "AWS_ENDPOINT_URL_SSM"


def main(src, out):
    with open(src, encoding="utf-8") as f:
        doc = yaml_parse(f.read())
    base = os.path.dirname(os.path.abspath(src))
    for lid, res in (doc.get("Resources") or {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.setdefault("Properties", {})
        uri = props.get("CodeUri")
        if not isinstance(uri, str):
            sys.exit(f"template.py: {lid} has no CodeUri path in {src} (not a `sam build` output?)")
        props["CodeUri"] = os.path.normpath(os.path.join(base, uri))
    fn = doc.setdefault("Globals", {}).setdefault("Function", {})
    variables = fn.setdefault("Environment", {}).setdefault("Variables", {})
    variables.setdefault(ENDPOINT_VAR, "")
    with open(out, "w", encoding="utf-8") as f:
        f.write(yaml_dump(doc))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
