# TEST STAND-IN ONLY: a small pure-Nix TOML writer, used in place of
# `pkgs.formats.toml { }.generate` (which runs remarshal in a derivation) by
# ./eval-module.nix, where no nixpkgs package set exists. The module itself
# always uses pkgs.formats.toml.
#
# It covers what the supervisor's config holds: a top-level table of tables,
# whose values are strings, integers, floats, booleans, lists and nested
# tables (written as inline tables). Every key is quoted. Strings are written
# as JSON strings, whose escapes (\" \\ \n \t \uXXXX) are also TOML's.
# Floats go through toJSON and may lose a trailing ".0"; null has no TOML
# form and is an error.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isPath
    isString
    map
    toJSON
    ;

  key = toJSON;

  value =
    v:
    if isBool v then
      (if v then "true" else "false")
    else if isInt v || isFloat v then
      toJSON v
    else if isString v || isPath v then
      toJSON (toString v)
    else if isAttrs v && v ? outPath then
      toJSON (toString v)
    else if isList v then
      "[ ${concatStringsSep ", " (map value v)} ]"
    else if isAttrs v then
      "{ ${concatStringsSep ", " (map (k: "${key k} = ${value v.${k}}") (attrNames v))} }"
    else
      throw "toml.nix: no TOML form for ${builtins.typeOf v}";

  section =
    name: table:
    "[${key name}]\n" + concatStringsSep "" (map (k: "${key k} = ${value table.${k}}\n") (attrNames table));
in
document:
concatStringsSep "\n" (
  map (
    name:
    if isAttrs document.${name} then
      section name document.${name}
    else
      throw "toml.nix: top-level key ${name} is not a table"
  ) (attrNames document)
)
