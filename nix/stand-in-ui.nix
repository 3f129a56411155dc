# The stand-in UI (examples/stand_in_ui.py) as a package with a bin/ entry,
# so it can be a `services.sd-webui-forge.package`: the NixOS VM test and a
# GPU-less try-out use it in place of Forge, AUTOMATIC1111 or ComfyUI.
{
  lib,
  stdenvNoCC,
  python3,
  makeWrapper,
}:
stdenvNoCC.mkDerivation {
  pname = "sd-webui-stand-in-ui";
  version = "0.1.0";

  src = ../examples/stand_in_ui.py;
  dontUnpack = true;

  nativeBuildInputs = [ makeWrapper ];

  installPhase = ''
    runHook preInstall
    install -Dm644 "$src" "$out/share/sd-webui-stand-in-ui/stand_in_ui.py"
    # -u: unbuffered, so its log lines reach the journal as they happen.
    makeWrapper ${lib.getExe python3} "$out/bin/stand-in-ui" \
      --add-flags "-u $out/share/sd-webui-stand-in-ui/stand_in_ui.py"
    runHook postInstall
  '';

  meta = {
    description = "Stand-in for the Stable Diffusion web UIs' HTTP APIs, for tests and demos";
    mainProgram = "stand-in-ui";
    platforms = lib.platforms.unix;
  };
}
