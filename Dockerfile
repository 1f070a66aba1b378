# syntax=docker/dockerfile:1
# The replikit demo service. Built by docker-compose.yml; runs the compiled dist/ with node directly.

# --- build: compile TypeScript with every dependency installed ----------------------------------
FROM node:22.22.2-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own "prepare" script would build before src/ is copied in.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- runtime: production dependencies and dist/ only, as the unprivileged "node" user ------------
FROM node:22.22.2-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
USER node
EXPOSE 3000
CMD ["node", "--import", "./dist/telemetry/register.js", "dist/app/start.js"]
