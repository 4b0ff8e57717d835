// JSON Schema (draft-07) validation for the deploy tests, through ajv (a devDependency).
// Returns readable messages instead of throwing, so a test can assert on what failed.
import { Ajv } from 'ajv';

/** Compiles `schema` strictly (unknown keywords are an error) and validates `data` against it. */
export function schemaErrors(schema: object, data: unknown): string[] {
  const ajv = new Ajv({ strict: true, allErrors: true, allowUnionTypes: true });
  const validate = ajv.compile(schema);
  if (validate(data)) return [];
  return (validate.errors ?? []).map((e) => {
    const where = e.instancePath === '' ? '(root)' : e.instancePath;
    const extra = e.keyword === 'additionalProperties' ? ` "${String((e.params as { additionalProperty?: string }).additionalProperty)}"` : '';
    return `${where} ${e.message ?? e.keyword}${extra}`;
  });
}
