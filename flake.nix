{
  description = "sd-webui-supervisor: Stable Diffusion web UIs (Forge, AUTOMATIC1111, ComfyUI) as systemd services that reload instead of restarting";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      modelName = import ./nix/model-name.nix;
    in
    {
      overlays.default = final: _prev: {
        sd-webui-supervisor = final.callPackage ./nix/package.nix { };
        sd-webui-stand-in-ui = final.callPackage ./nix/stand-in-ui.nix { };
        # pkgs.fetchurl with the store name of lib.fetchModel; takes
        # fetchurl's other arguments too, e.g. for a download that needs a
        # token: curlOptsList, or netrcPhase with netrcImpureEnvVars.
        fetchModel =
          {
            url,
            hash,
            name ? null,
            ...
          }@args:
          final.fetchurl (
            removeAttrs args [ "name" ]
            // {
              name = modelName { inherit url name; };
              inherit url hash;
            }
          );
      };

      packages = forAllSystems (
        pkgs:
        let
          own = self.overlays.default pkgs pkgs;
        in
        {
          default = own.sd-webui-supervisor;
          inherit (own) sd-webui-supervisor;
          stand-in-ui = own.sd-webui-stand-in-ui;
        }
      );

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./module.nix ];
          services.sd-webui-forge.supervisorPackage =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.sd-webui-supervisor;
        };

      lib = {
        # fetchModel { url, hash, name ? null }: see nix/fetch-model.nix.
        fetchModel = import ./nix/fetch-model.nix;
        # modelName { url, name ? null }: the store name fetchModel uses.
        inherit modelName;
      };

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
          # The module's config file alone, without building a whole system.
          configFileOf =
            settings:
            (lib.nixosSystem {
              modules = [
                self.nixosModules.default
                {
                  nixpkgs.hostPlatform = system;
                  services.sd-webui-forge = {
                    enable = true;
                    package = self.packages.${system}.stand-in-ui;
                  }
                  // settings;
                }
              ];
            }).config.services.sd-webui-forge.configFile;
        in
        {
          inherit (self.packages.${system}) sd-webui-supervisor stand-in-ui;

          # A config that passes the module's checks passes check-config.
          config-accepted = configFileOf {
            models.checkpoints."a.safetensors" = pkgs.writeText "a.safetensors" "stand-in";
            settings.CLIP_stop_at_last_layers = 2;
            gpus = [ 0 ];
          };

          # One that only the supervisor can reject (idle_grace longer than
          # deadline) fails the build, with check-config's message.
          config-rejected =
            pkgs.runCommand "config-rejected"
              {
                failed = pkgs.testers.testBuildFailure (configFileOf {
                  restart.idleGrace = "3h";
                  restart.deadline = "1h";
                });
              }
              ''
                grep -E 'restart\.(idle_grace|deadline)' "$failed/testBuildFailure.log"
                touch "$out"
              '';

          vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
